"""Images as tokens (issue 31): the codebook, encode/decode, the tasks' held-out splits, the chat
format's image parts, and bad input."""
import base64

import numpy as np
import pytest

from lm import conversation as ch
from lm import images, tasks
from lm.tasks import vision


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lm.tokenizer import train_bpe, trained_specials
    return train_bpe(["What digit is this? It is the digit 7. #### 7 Draw a red cross."] * 30,
                     256 + len(trained_specials()) + 40)


def test_codebook_is_the_tools_and_round_trips_with_the_reported_error():
    from tools import image_codebook
    assert np.allclose(image_codebook.learn(), images.codebook(), atol=2e-4)
    err = image_codebook.errors()
    assert err["pictures"]["mse"] == 0.0                     # drawn in the palette's blocks
    assert 0 < err["digits"]["mse"] < 0.02
    for s, c, p in vision.combinations("train")[:20]:
        img = vision.picture(s, c, p)
        assert np.array_equal(images.decode(images.encode(img)), img)
        assert vision.detect(img) == (s, c, p)


def test_held_out_images_and_combinations_never_reach_training():
    d = vision.digits()
    train = {img.tobytes() for img, _ in d["train"]}
    assert len(d["test"]) > 300 and not any(img.tobytes() in train for img, _ in d["test"])
    test_combos = set(vision.combinations("test"))
    assert test_combos and not test_combos & set(vision.combinations("train"))
    for name in ("picture_describe", "picture_draw"):
        t = tasks.get(name)
        seen = {(c["shape"], c["colour"], c["position"])
                for c in (t.example("train", i) for i in range(2000))}
        assert not seen & test_combos
        assert {(c["shape"], c["colour"], c["position"])
                for c in (t.example("test", i) for i in range(t.size("test")))} == test_combos
    digits = tasks.get("digits")
    seen = {tuple(digits.example("train", i)["messages"][0]["content"][0]["codes"])
            for i in range(3000)}
    held = {tuple(digits.example("test", i)["messages"][0]["content"][0]["codes"])
            for i in range(digits.size("test"))}
    # codes can coincide for near-identical images; the images themselves never do (above)
    assert len(held - seen) > 0.9 * len(held)


def test_questions_are_varied_in_training_and_held_out_in_the_test():
    def asked(name, split, n):
        t = tasks.get(name)
        out = set()
        for i in range(n):
            c = t.example(split, i)
            content = c["messages"][0]["content"]
            text = content if isinstance(content, str) else next(
                p["text"] for p in content if p.get("type") == "text")
            if name == "picture_draw":             # the request's frame, the picture left out
                text = text.replace(f"{c['colour']} {c['shape']} at the {c['position']}", "X")
            out.add(text)
        return out
    for name, at_least in (("digits", 10), ("picture_describe", 10), ("picture_draw", 15)):
        t = tasks.get(name)
        train = asked(name, "train", 3000)
        test = asked(name, "test", t.size("test"))
        assert len(train) >= at_least and len(test) == 2
        assert not train & test, (name, train & test)


def test_image_parts_render_and_parse_back(tok):
    draw = tasks.get("picture_draw").example("test", 5)
    ids, mask = ch.render(draw, tok)
    start, end, codes = ch.media_tokens(tok, "image")
    i0, i1 = ids.index(start), ids.index(end)
    assert all(m == 1 for m in mask[i0:i1 + 1])              # the drawing is trained
    reply = ids[len(ch.render_for_completion(draw, tok)):]
    parts = ch.parse_reply(reply, tok)
    want = draw["messages"][-1]["content"]
    assert parts == want
    text = ch.reply_text(parts)
    assert tasks.get("picture_draw").evaluate(draw, text)
    # a user image is never trained; stray codes outside an image are dropped; an unterminated
    # image keeps its codes
    read = tasks.get("digits").example("train", 3)
    ids, mask = ch.render(read, tok)
    assert mask[ids.index(start)] == 0 and mask[ids.index(end)] == 0
    assert ch.parse_reply([codes[3], start, codes[1], codes[2]], tok) == [
        {"type": "image", "codes": [1, 2]}]
    # with a system message the image stays in the first user turn
    sys_conv = {"messages": [{"role": "system", "content": "Be brief."}] + read["messages"]}
    assert ch.render(sys_conv, tok)[0].count(start) == 1


def test_bad_images_and_parts_are_named_errors(tmp_path):
    with pytest.raises(images.ImageError, match="square with an even side"):
        images.encode(np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(images.ImageError, match="H×W×3 uint8"):
        images.encode(np.zeros((8, 8), np.uint8))
    with pytest.raises(images.ImageError, match="not a readable image"):
        images.from_png(b"\x89PNG\r\n\x1a\n broken")
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(buf, format="JPEG")
    with pytest.raises(images.ImageError, match="mode 'CMYK'"):
        images.from_png(buf.getvalue())
    with pytest.raises(images.ImageError, match="base64 data URL"):
        images.from_data_url("https://example.com/cat.png")
    with pytest.raises(images.ImageError, match="not a readable image"):
        images.from_data_url("data:image/png;base64," + base64.b64encode(b"hello").decode())
    with pytest.raises(images.ImageError, match="No such file"):
        images.load_file(str(tmp_path / "none.png"))
    img = vision.picture("cross", "red", "top")
    assert np.array_equal(images.from_data_url(images.data_url(img)), img)
    with pytest.raises(images.ImageError, match="square grid"):
        images.decode([0, 1, 2])
    for codes in ([], [0, 1, 2], [0, 0, 0, 99], "abc"):
        bad = {"messages": [{"role": "user", "content": [{"type": "image", "codes": codes}]}]}
        with pytest.raises(ch.ConversationError, match="square number"):
            ch.validate(bad)
    with pytest.raises(ch.ConversationError, match="text, an image or audio"):
        ch.validate({"messages": [{"role": "user", "content": [{"type": "python", "text": "1"}]}]})


def test_grades_and_detection():
    t = tasks.get("picture_describe")
    c = t.example("test", 0)
    s, col, p = c["shape"], c["colour"], c["position"]
    assert t.evaluate(c, c["messages"][-1]["content"])
    other = next(x for x in vision.SHAPES if x != s)
    g = t.grades(c, f"A {col} {other} at the {p}.")
    assert g == {"shape": False, "colour": True, "position": True}
    assert not t.grades(c, f"A {col} {s} or a {other}.")["shape"]
    draw = tasks.get("picture_draw")
    d = draw.example("test", 0)
    wrong = vision.picture(d["shape"], d["colour"],
                           next(x for x in vision.POSITIONS if x != d["position"]))
    text = f"[image {' '.join(map(str, images.encode(wrong)))}]"
    assert draw.grades(d, text) == {"shape": True, "colour": True, "position": False}
    assert draw.grades(d, "I cannot draw.") == {"shape": False, "colour": False,
                                                "position": False}
    two = vision.picture("dot", "red", "top") | vision.picture("dot", "blue", "bottom")
    assert vision.detect(two) is None
    pixels, tokens = vision.pixel_baseline(), vision.token_baseline()
    assert 0.9 < tokens <= pixels < 1.0      # the codes keep what a linear reader needs


def test_server_takes_image_parts_and_names_bad_images(tmp_path):
    """OpenAI image_url parts become image tokens in the user turn; a drawn reply sent back as
    Markdown becomes an image part again; bad images are 400s naming the message."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from lm.serve import app as serve_app
    from lm.serve.schema import ChatRequest
    from tests.test_serve import _make_run
    run = _make_run(tmp_path / "r", "sft")
    app = serve_app.create_app(run, allowed_hosts=["testserver"], warmup=False)
    img = vision.picture("cross", "red", "top left")
    url = images.data_url(img)
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "Describe the picture."}]}]
    conv = serve_app.conversation_of(ChatRequest(messages=msgs))
    assert conv["messages"][0]["content"][0] == {"type": "image", "codes": images.encode(img)}
    back = serve_app.conversation_of(ChatRequest(messages=msgs + [
        {"role": "assistant", "content": f"Here: {ch.image_markdown(images.encode(img))}"},
        {"role": "user", "content": "Again."}]))
    assert back["messages"][1]["content"][1] == {"type": "image", "codes": images.encode(img)}
    small = [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": images.data_url(vision.digits()["test"][0][0])}}, {"type": "text", "text": "?"}]}]
    with TestClient(app) as c:              # (a digit: the tiny test model's context is 96)
        r = c.post("/v1/chat/completions", json={"messages": small, "max_tokens": 4})
        assert r.status_code == 200, r.text
        for bad, code in (([{"type": "image_url", "image_url": {
                "url": "data:image/png;base64,aGVsbG8="}}], "invalid_image"),
                          ([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                           "invalid_image")):
            r = c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": bad}], "max_tokens": 4})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
            assert "messages[0]" in r.json()["error"]["message"]
        from PIL import Image
        import io
        buf = io.BytesIO()
        Image.fromarray(np.zeros((10, 8, 3), np.uint8)).save(buf, format="PNG")
        odd = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": odd}}]}], "max_tokens": 4})
        assert r.status_code == 400 and "8×10" in r.json()["error"]["message"], r.text
        r = c.post("/v1/chat/completions", json={"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": url}}]},
            {"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 400 and "images and audio go in user messages" in r.json()["error"]["message"]


def test_streamed_drawings_show_as_images(tok):
    codes = images.encode(vision.picture("dot", "blue", "centre"))
    start, end, ids = ch.media_tokens(tok, "image")
    stream = ch.TextStream(tok)
    out = stream.push(tok.encode("Here: ") + [start] + [ids[c] for c in codes[:40]])
    out += stream.push([ids[c] for c in codes[40:]] + [end])
    assert out.startswith("Here: ![image](data:image/png;base64,")
    url = out[len("Here: ![image]("):-1]
    assert np.array_equal(images.from_data_url(url), images.decode(codes))
    cut = ch.TextStream(tok)
    cut.push([start] + [ids[c] for c in codes[:5]])
    assert cut.flush().startswith("[unfinished image")
    saved = []
    own = ch.TextStream(tok, image_fn=lambda c: saved.append(c) or "[saved]")
    assert own.push([start] + [ids[c] for c in codes] + [end]) == "[saved]" and saved == [codes]


def test_chat_page_sends_an_image_and_shows_drawn_ones(tmp_path):
    """In a real browser: an attached image goes out as an image_url part (the reply comes back,
    no error) and shows in the user's message; Markdown PNG data URLs in a reply render as
    pictures, other image URLs never do."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from tests.test_serve import _browser, _make_run, create_app, serving
    run = _make_run(tmp_path / "r", "sft", never_stop=True)
    url = images.data_url(vision.digits()["test"][0][0])
    with serving(create_app(run, slots=2, chunk=2)) as server:
        d = _browser()
        try:
            d.get(server + "/")
            WebDriverWait(d, 30).until(lambda d: "chat" in d.find_element(By.ID, "model").text)
            # a dropped file is read as a data URL and attached to the next message
            d.execute_script(
                "const bytes = Uint8Array.from(atob(arguments[0].split(',')[1]), c => c.charCodeAt(0));"
                "const dt = new DataTransfer();"
                "dt.items.add(new File([bytes], 'd.png', {type: 'image/png'}));"
                "$('log').dispatchEvent(new DragEvent('drop', {dataTransfer: dt}));", url)
            WebDriverWait(d, 10).until(lambda d: d.execute_script("return attached") == url)
            d.find_element(By.ID, "input").send_keys("What digit is this?")
            d.find_element(By.ID, "send").click()
            WebDriverWait(d, 60).until(lambda d: any(
                "finish" in m.text for m in d.find_elements(By.CSS_SELECTOR, ".msg .meta")))
            assert not d.find_elements(By.CSS_SELECTOR, ".msg.error")
            pics = d.find_elements(By.CSS_SELECTOR, ".msg.user img.picture")
            assert len(pics) == 1 and pics[0].get_attribute("src") == url
            sent = d.execute_script("return history[0].content")
            assert sent[0]["type"] == "image_url" and sent[1]["text"] == "What digit is this?"
            shown = d.execute_script(
                "const el = document.createElement('div');"
                "render(el, arguments[0]); return [el.querySelectorAll('img').length, el.textContent];",
                f"Here: ![image]({url}) and ![x](http://example.com/x.png)")
            assert shown[0] == 1 and "http://example.com/x.png" in shown[1]
            calls = d.execute_script(
                "const el = document.createElement('div');"
                "render(el, arguments[0]);"
                "return [...el.querySelectorAll('.tool')].map(s => [s.title, s.textContent]);",
                '<<search("Keidin")=Keidin plays the harp.>> and <<2+3=5>>')
            assert calls == [["search", '🔎 search("Keidin") → Keidin plays the harp.'],
                             ["calculator", "🧮 2+3 = 5"]]
        finally:
            d.quit()


def test_chat_cli_sends_an_image_and_saves_drawn_ones(tmp_path, capsys):
    from lm import chat
    from tests.test_serve import _make_run
    run = _make_run(tmp_path / "r", "sft")
    png = tmp_path / "digit.png"
    png.write_bytes(images.to_png(vision.digits()["test"][0][0]))
    assert chat.main(["--run", run.run_dir, "--prompt", "What digit?", "--image", str(png),
                      "--max_new_tokens", "4", "--temperature", "0"]) == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert chat.main(["--run", run.run_dir, "--prompt", "What digit?", "--image", str(bad),
                      "--max_new_tokens", "4"]) == 2
    assert "not a readable image" in capsys.readouterr().err
    # a drawn image becomes a PNG file, its path shown in the reply
    sess = chat.Session(run.params, run.config, run.tokenizer, "chat",
                        save_images=str(tmp_path / "out"))
    codes = images.encode(vision.picture("dot", "red", "centre"))
    shown = sess._save(codes)
    path = shown[len("[image saved to "):-1]
    assert np.array_equal(images.load_file(path), images.decode(codes))


def test_samples_show_pictures(tmp_path):
    from lm.stages.sft import write_samples
    codes = images.encode(vision.picture("ring", "green", "bottom"))
    write_samples(str(tmp_path), [{"task": "picture_draw", "prompt": "Draw a green ring.",
                                   "reply": f"Here it is: [image {' '.join(map(str, codes))}]",
                                   "correct": True, "format_ok": True},
                                  {"task": "digits", "prompt": "[image 1 2 3] What digit?",
                                   "reply": "#### 7", "correct": False, "format_ok": True}])
    md = (tmp_path / "samples.md").read_text()
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert len(pngs) == 1 and f'src="samples/{pngs[0].name}"' in md
    assert np.array_equal(images.load_file(str(pngs[0])), images.decode(codes))
    assert "[image 1 2 3]" in md                     # not a square grid: left as text
