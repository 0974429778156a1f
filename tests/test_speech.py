"""Speech as tokens (issue 31): espeak-ng's clips, held-out voices, the codebook's error, the
chat format's audio parts and bad sound."""
import base64
import io
import wave

import numpy as np
import pytest

from lm import audio, tasks
from lm import conversation as ch
from lm.tasks import speech

pytestmark = pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None,
                                reason="apt install espeak-ng (.ci/run installs it)")


def test_held_out_voices_never_reach_training():
    test_voices = set(speech.voices("test"))
    assert test_voices and not test_voices & set(speech.voices("train"))
    assert len(test_voices) + len(speech.voices("train")) == len(speech.VOICES)
    t = tasks.get("speech_digits")
    for i in range(200):
        assert t.example("train", i)["voice"] not in test_voices
    held = {t.example("test", i)["voice"] for i in range(t.size("test"))}
    assert held == test_voices
    assert {c["word"] for c in speech.clips("test")} == set(speech.WORDS)


def test_codebook_error_on_held_out_voices():
    from tools import audio_codebook
    err = audio_codebook.errors()
    assert err["clean"]["clips"] == len(speech.clips("test"))
    for level in ("clean", "20dB", "10dB"):
        assert err[level]["share_of_variance"] < 0.8
        # noisy speech still spreads over the codebook (a codebook learned on clean speech alone
        # sent every 10 dB frame to one code)
        assert err[level]["codes_used"] > audio.CODES // 2


def test_grading_and_audio_parts(tmp_path):
    t = tasks.get("speech_digits")
    c = t.example("test", 3)
    assert t.evaluate(c, c["messages"][-1]["content"])
    word = c["answer"]
    assert t.evaluate(c, f"That is {speech.DIGITS.index(word)}.")
    other = next(w for w in speech.DIGITS if w != word)
    assert not t.evaluate(c, f'"{word}" or "{other}"')
    from lm.tokenizer import train_bpe, trained_specials
    tok = train_bpe(["You said seven."] * 20, 256 + len(trained_specials()) + 10)
    ids, mask = ch.render(c, tok)
    start, end, codes = ch.media_tokens(tok, "audio")
    assert ids.count(start) == 1 and mask[ids.index(start)] == 0
    assert ch.parse_reply([start, codes[4], codes[0], end], tok) == [
        {"type": "audio", "codes": [4, 0]}]
    with pytest.raises(ch.ConversationError, match="audio part needs 'codes'"):
        ch.validate({"messages": [{"role": "user", "content": [
            {"type": "audio", "codes": [audio.CODES]}]}]})


def _wav(samples, rate=16000, width=2):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples * width, np.uint8).tobytes())
    return buf.getvalue()


def test_bad_sound_is_a_named_error(tmp_path):
    with pytest.raises(audio.AudioError, match="22050 Hz"):
        audio.read_wav(_wav(100, rate=22050))
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.read_wav(_wav(0))
    with pytest.raises(audio.AudioError, match="8-bit"):
        audio.read_wav(_wav(100, width=1))
    with pytest.raises(audio.AudioError, match="not a readable WAV"):
        audio.read_wav(b"RIFF1234WAVEjunk")
    with pytest.raises(audio.AudioError, match="only 'wav'"):
        audio.from_base64("AAAA", "mp3")
    with pytest.raises(audio.AudioError, match="at most"):
        audio.encode(np.zeros(int(audio.MAX_SECONDS * 16000) + 1, np.float32))
    clip = speech.clips("test")[0]["wave"]
    back = audio.from_base64(base64.b64encode(audio.to_wav(clip)).decode())
    assert np.abs(back - clip).max() < 1e-3 and audio.encode(back) == audio.encode(clip)


def test_server_and_cli_take_recordings(tmp_path, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from lm import chat
    from lm.serve import app as serve_app
    from tests.test_serve import _make_run
    run = _make_run(tmp_path / "r", "sft")
    clip = speech.clips("test")[0]["wave"][:8000]              # half a second: a short prompt
    data = base64.b64encode(audio.to_wav(clip)).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    app = serve_app.create_app(run, allowed_hosts=["testserver"], warmup=False)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            part, {"type": "text", "text": "?"}]}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        bad = {"type": "input_audio", "input_audio": {
            "data": base64.b64encode(_wav(100, rate=8000)).decode(), "format": "wav"}}
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [bad]}],
                                                 "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_audio"
        assert "8000 Hz" in r.json()["error"]["message"]
    wav = tmp_path / "say.wav"
    wav.write_bytes(audio.to_wav(clip))
    assert chat.main(["--run", run.run_dir, "--prompt", "What was said?", "--audio", str(wav),
                      "--max_new_tokens", "3"]) == 0
    (tmp_path / "zero.wav").write_bytes(_wav(0))
    assert chat.main(["--run", run.run_dir, "--prompt", "?", "--audio",
                      str(tmp_path / "zero.wav")]) == 2
    assert "no samples" in capsys.readouterr().err
