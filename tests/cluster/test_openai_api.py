"""cluster.openai_api: OpenAI requests in, typed calls out; what cannot be honoured is refused. No Ray."""

from __future__ import annotations

import pytest

from cluster import openai_api as oa
from protocols.errors import InsufficientFunds, InvalidParams, NotEnoughNodes, UnknownModel

USER = [{"role": "user", "content": "hi"}]


def test_a_chat_with_one_user_turn_goes_to_the_engines_own_template():
    call = oa.parse(oa.CHAT, {"messages": USER, "max_tokens": 9, "temperature": 0.5,
                              "verinfer": {"mode": "sampling", "n": 3, "top_k": 4}}, "m")
    assert (call.model, call.prompt, call.template, call.max_tokens, call.temperature) == ("m", "hi", True, 9, 0.5)
    assert (call.mode, call.n, call.top_k, call.stream) == ("sampling", 3, 4, False)


def test_longer_chats_are_rendered_with_the_models_template():
    tpl = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    call = oa.parse(oa.CHAT, {"model": "m", "messages": msgs}, "m", {"m": tpl})
    assert call.prompt == "<system>be brief<user>hi<a>" and call.template is False
    assert oa.parse(oa.CHAT, {"messages": msgs}, "m").prompt == "system: be brief\nuser: hi\nassistant:"


def test_a_template_cannot_escape_its_sandbox():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(oa.APIError) as exc:
        oa.parse(oa.CHAT, {"messages": USER * 2}, "m", {"m": evil})
    assert exc.value.status == 500


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"), ({"top_p": 0.9}, "top_p"), ({"stop": "x"}, "stop"), ({"seed": 1}, "seed"),
    ({"logprobs": True}, "logprobs"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"max_tokens": 5000}, "max_tokens"), ({"max_tokens": "9"}, "max_tokens"), ({"temperature": -1}, "temperature"),
    ({"stream": "yes"}, "stream"), ({"verinfer": {"mode": "x"}}, "verinfer.mode"),
    ({"verinfer": {"p": 2}}, "verinfer.p"), ({"verinfer": {"bogus": 1}}, "verinfer"),
    ({"verinfer": {"request": "!!"}}, "verinfer.request"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
])
def test_unsupported_or_malformed_parameters_are_400(body, param):
    with pytest.raises(oa.APIError) as exc:
        oa.parse(oa.CHAT, {"messages": USER, **body}, "m")
    assert exc.value.status == 400 and exc.value.param == param
    assert exc.value.body()["error"]["type"] == "invalid_request_error"


def test_completions_take_one_prompt_as_given():
    call = oa.parse(oa.COMPLETION, {"prompt": ["once"]}, "m")
    assert call.prompt == "once" and call.template is False
    with pytest.raises(oa.APIError):
        oa.parse(oa.COMPLETION, {"prompt": ["a", "b"]}, "m")


@pytest.mark.parametrize("exc,status,code", [
    (UnknownModel("m"), 404, "model_not_found"), (InsufficientFunds("x"), 402, "insufficient_quota"),
    (NotEnoughNodes("x"), 503, "no_capacity"), (InvalidParams("x"), 400, "InvalidParams"),
    (RuntimeError("boom"), 500, None),
])
def test_errors_map_to_openai_statuses(exc, status, code):
    err = oa.error_for(exc)
    assert err.status == status and err.code == code
    assert "boom" not in err.message  # internal errors do not leak their text


def test_a_stream_that_did_not_hold_says_so_and_carries_the_accepted_text():
    from types import SimpleNamespace

    summary = SimpleNamespace(n=3, members={"a": "quorum"}, paid=("a",), slashed=(("b", "cheat"),))
    res = SimpleNamespace(request_id="r", status="resolved", summary=summary, branch="", text="right",
                          time_to_first_output=0.1, time_to_finality=0.2)
    vi = oa.verinfer_object(res, "u", "sampling", streamed_text="wrong")
    assert vi["stream_held"] is False and vi["accepted_text"] == "right" and vi["slashed"] == [["b", "cheat"]]
    assert oa.verinfer_object(res, "u", "sampling", streamed_text="right")["stream_held"] is True
