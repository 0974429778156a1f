"""The API's request bodies as pydantic models: validated before anything reaches the scheduler,
and documented in `/openapi.json` (so clients and fuzzers see the same schema).

Types are strict (a string is not a number, a bool is not an integer), numbers finite, ranges
OpenAI's; unknown fields are ignored. A body that breaks the schema is a 400 in the OpenAI error
shape naming the field (`app.validation_error`); checks that need the model or tokenizer (the
context length, the served model's name) happen in `app.build_request`.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

MAX_N = 8
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
INT64 = 2 ** 63


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: StrictStr = Field(description="a base64 data URL: data:image/png;base64,...")


class ImagePart(BaseModel):
    """OpenAI's image content part; the image becomes tokens (`lm.images`) in a user turn."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: StrictStr = Field(description="base64 of a 16-bit PCM WAV at 16 kHz")
    format: StrictStr = "wav"


class AudioPart(BaseModel):
    """OpenAI's input_audio content part; the sound becomes tokens (`lm.audio`) in a user turn."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_audio"]
    input_audio: InputAudio


MAX_TOOLS = 128


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr
    arguments: StrictStr = Field(description="the arguments as a JSON object's text")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, list[Union[TextPart, ImagePart, AudioPart]], None] = None
    tool_calls: Optional[list[ToolCall]] = None      # assistant: the calls it made
    tool_call_id: Optional[StrictStr] = None         # tool: the call this result answers


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: Optional[StrictStr] = None
    parameters: Optional[dict] = Field(None, description="a JSON Schema object")
    strict: Optional[StrictBool] = Field(None, description="calls decoded under the grammar of "
                                                           "the offered functions")


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: Optional[StrictBool] = None


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[StrictStr] = None
    schema_: Optional[dict] = Field(None, alias="schema", description="a JSON Schema object")
    strict: Optional[StrictBool] = None


class ResponseFormat(BaseModel):
    """OpenAI's structured outputs: replies decoded under a grammar (`lm.structured`)."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaSpec] = None


class Common(BaseModel):
    """The sampling fields both routes take."""
    model_config = ConfigDict(extra="ignore")
    model: Optional[StrictStr] = None
    max_tokens: Optional[int] = Field(None, strict=True, gt=0, lt=INT64)
    max_completion_tokens: Optional[int] = Field(None, strict=True, gt=0, lt=INT64)
    temperature: Optional[float] = Field(None, strict=True, allow_inf_nan=False, ge=0, le=2)
    top_p: Optional[float] = Field(None, strict=True, allow_inf_nan=False, gt=0, le=1)
    top_k: Optional[int] = Field(None, strict=True, ge=0, lt=INT64,
                                 description="lm extension: sample from the k most likely tokens")
    n: Optional[int] = Field(None, strict=True, ge=1, le=MAX_N)
    seed: Optional[int] = Field(None, strict=True, ge=-INT64, lt=INT64)
    stop: Union[StrictStr, list[StrictStr], None] = Field(None, description=f"up to {MAX_STOP}")
    stream: Optional[StrictBool] = None
    stream_options: Optional[StreamOptions] = None

    def budget_key(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def budget(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[int] = Field(None, strict=True, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Optional[list[Tool]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[StrictBool] = None     # accepted; the model decides
    response_format: Optional[ResponseFormat] = None


class CompletionRequest(Common):
    prompt: Union[StrictStr, list[StrictStr]]
    logprobs: Optional[int] = Field(None, strict=True, ge=0, le=5)
