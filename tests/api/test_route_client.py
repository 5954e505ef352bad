"""Hub.route as apps call it: a chat routes on the tokens of its last user message (not the template, not
the system prompt), and an input too long for one request is routed whole, split over several requests
and combined exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quiver_hub import Hub
from quiver_hub.local.capture import capture_inputs, chat_tokens
from quiver_hub.routing import Routing, split_requests
from tests.api.test_route import HIDDEN, brute_force, dense_prototypes
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer

MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def chat_tokenizer():  # noqa: ANN201
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = (
        "<|im_start|> <|im_end|> system user assistant you are helpful translate this into french good night".split()
    )
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    return fast


def tiny_llama():  # noqa: ANN201
    """A random two-layer Llama that reads chat_tokenizer's ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).eval()


def test_a_chat_routes_on_its_last_user_message_only() -> None:
    tok = chat_tokenizer()
    messages = [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "good night"},
        {"role": "assistant", "content": "good night"},
        {"role": "user", "content": "translate this into french"},
    ]
    ids, mask = chat_tokens(tok, messages)
    routed = [tok.convert_ids_to_tokens(i) for i, keep in zip(ids, mask, strict=True) if keep]
    assert routed == ["translate", "this", "into", "french"]
    assert tok.convert_ids_to_tokens(ids[-2:]) == ["<|im_start|>", "assistant"]  # the model reads the whole chat


def test_the_states_of_routed_tokens_are_those_the_model_computes_in_context() -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    tok = chat_tokenizer()
    ids, mask = chat_tokens(tok, [{"role": "user", "content": "translate this into french"}])
    states = capture_inputs(model, tok, None, MODULES, input_ids=ids, mask=mask)
    full = capture_inputs(model, tok, None, MODULES, input_ids=ids)
    keep = torch.tensor(mask)
    for m in MODULES:
        assert states[m].shape == (4, HIDDEN) and torch.equal(states[m], full[m][keep])


def test_a_long_input_over_many_modules_is_routed_whole(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    protos = {}
    for i in range(6):  # two of them adapt q_proj alone: their scores are means over 2 of the 4 modules
        projs = ("q_proj",) if i % 3 == 0 else ("q_proj", "v_proj")
        folder = write_adapter(tmp_path / f"a{i}", seed=i, hidden=HIDDEN, projs=projs)
        with server.client(token) as c:
            assert c.post(f"/v1/adapters/alice/a{i}", files=upload_parts(folder)).status_code == 201
        protos[f"alice/a{i}"] = dense_prototypes(folder)
    rng = np.random.default_rng(0)
    # 3 modules of 3000 tokens and one of 10000: 19000 rows, over the hub's 8192 a request
    hidden = {
        m: rng.standard_normal((10_000 if i == 0 else 3000, HIDDEN)).astype(np.float32) for i, m in enumerate(MODULES)
    }
    requests = split_requests(hidden, 8192)
    assert len(requests) > 2 and abs(sum(w for w, _ in requests) - 1.0) < 1e-12
    assert all(sum(len(h) for h in states.values()) <= 8192 for _, states in requests)
    assert all(list(states) == list(hidden) for _, states in requests)  # every module, most with no rows
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as hub:
        routed = hub.route(hidden, base_model=BASE, top_k=2, limit=6)
    assert isinstance(routed, Routing)
    expected = brute_force(protos, hidden, 2, 1.0)
    assert [r["id"] for r in routed] == sorted(expected, key=lambda k: (-expected[k], k))
    for r in routed:
        assert abs(r["score"] - expected[r["id"]]) < 1e-5
    share = {n: sum(m in protos[n] for m in hidden) / len(hidden) for n in protos}
    assert {s for s in share.values()} == {0.5, 1.0}
    assert abs(sum(r["score"] * share[r["id"]] for r in routed) - 1.0) < 1e-5  # each token's weights sum to 1


def test_merge_plan() -> None:
    answer = Routing(
        [
            {"id": "a/x", "revision": "1" * 40, "score": 0.5},
            {"id": "a/y", "revision": "2" * 40, "score": 0.3},
            {"id": "a/z", "revision": "3" * 40, "score": 0.2},
        ]
    )
    assert answer.merge_plan() == [(f"a/x@{'1' * 40}", 1.0)]
    plan = answer.merge_plan(min_share=0.5)
    assert [s for s, _ in plan] == [f"a/x@{'1' * 40}", f"a/y@{'2' * 40}"] and sum(w for _, w in plan) == 1.0
    assert Routing().merge_plan() == []


def test_arrow_plus_examples_equals_its_brute_force_and_keeps_private_examples_private(
    server: LiveServer, tmp_path: Path
) -> None:
    from quiver_hub.registry.search.embedder import default_embedder
    from quiver_hub.registry.search.routing import EXAMPLES_TEMPERATURE
    from quiver_hub.registry.search.vectors import normalised_mean

    alice, bob = server.token("alice"), server.token("bob")
    embedder = default_embedder()
    texts = {
        "alice/fr": ["Translate into French: good night", "Say this in French: thank you"],
        "alice/sql": ["Write a SQL query listing all users", "SELECT the names of customers from Paris"],
        "alice/plain": None,  # no examples: only its Arrow half counts
        "bob/fr-secret": ["Translate into French: good morning", "French please: see you"],
    }
    protos, examples = {}, {}
    for i, (repo, lines) in enumerate(texts.items()):
        extra = {"examples.jsonl": "".join(f'"{x}"\n' for x in lines).encode()} if lines else {}
        folder = write_adapter(tmp_path / repo.replace("/", "-"), seed=i, hidden=HIDDEN, extra_files=extra)
        owner = repo.split("/")[0]
        with server.client(alice if owner == "alice" else bob) as c:
            data = {"visibility": "private" if owner == "bob" else "public"}
            assert c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=data).status_code == 201
        protos[repo] = dense_prototypes(folder)
        if lines:
            examples[repo] = normalised_mean(embedder.embed(lines))
    rng = np.random.default_rng(1)
    hidden = {m: rng.standard_normal((4, HIDDEN)).astype(np.float32) for m in MODULES[:2]}
    text = "Please translate into French: good evening"
    query = embedder.embed_one(text)

    def expected(visible: set[str]) -> dict[str, float]:
        arrow = brute_force({r: p for r, p in protos.items() if r in visible}, hidden, 2, 1.0)
        cos = {r: float(v @ query) for r, v in examples.items() if r in visible}
        z = np.array(list(cos.values())) / EXAMPLES_TEMPERATURE
        share = dict(zip(cos, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), strict=True))
        return {r: (arrow.get(r, 0.0) + share.get(r, 0.0)) / 2 for r in visible}

    public = {"alice/fr", "alice/sql", "alice/plain"}
    for token, visible in ((None, public), (bob, public | {"bob/fr-secret"})):
        with Hub(server.url, token or "", cache_dir=tmp_path / "cache") as hub:
            routed = hub.route(hidden, base_model=BASE, top_k=2, limit=10, text=text)
        want = expected(visible)
        assert {r["id"] for r in routed} == {r for r, s in want.items() if s > 0}
        for r in routed:
            assert abs(r["score"] - want[r["id"]]) < 1e-5, (r, want)
    assert routed[0]["id"] in ("alice/fr", "bob/fr-secret")  # the words decide among the French ones


def test_hub_route_on_a_chat_sends_the_centered_states_of_the_users_words(server: LiveServer, tmp_path: Path) -> None:
    """Each method's states, scored as the brute force scores them: at top_k = 2, and at each method's
    default (the paper's 3 for "arrow", 1 for the centered ones: api.DEFAULT_TOP_K)."""
    from quiver_hub import reference_means

    token = server.token("alice")
    protos = {}
    for i in range(4):
        folder = write_adapter(tmp_path / f"a{i}", seed=20 + i, hidden=HIDDEN)
        with server.client(token) as c:
            assert c.post(f"/v1/adapters/alice/c{i}", files=upload_parts(folder)).status_code == 201
        protos[f"alice/c{i}"] = dense_prototypes(folder)
    torch.manual_seed(0)
    model = tiny_llama()
    model.name_or_path = BASE
    tok = chat_tokenizer()
    messages = [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "translate this into french"},
    ]
    ids, mask = chat_tokens(tok, messages)
    states = capture_inputs(model, tok, None, MODULES, input_ids=ids, mask=mask)
    means = reference_means(model, tok, MODULES, chat=True)
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as hub:
        centered = {m: h - means[m] for m, h in states.items()}
        for method, sent, default in (
            ("arrow", states, 3),
            ("arrow-centered", centered, 1),
            ("arrow+examples", centered, 1),  # no adapter has examples
        ):
            for top_k in (2, None):
                routed = hub.route(model=model, tokenizer=tok, messages=messages, method=method, top_k=top_k, limit=4)
                want = brute_force(protos, {m: h.numpy() for m, h in sent.items()}, top_k or default, 1.0)
                got = {r["id"]: round(r["score"], 5) for r in routed}
                assert got == {k: round(v, 5) for k, v in want.items() if v > 0}, (method, top_k)


def test_hub_route_asks_the_modules_once_and_again_after_its_own_push(server: LiveServer, tmp_path: Path) -> None:
    """The modules a hub routes on are kept by the client (Hub.route_modules): one GET for many routes, and
    a push of its own (which may adapt new modules) forgets them."""
    token = server.token("alice")
    model, tok = tiny_llama(), chat_tokenizer()
    model.name_or_path = BASE
    messages = [{"role": "user", "content": "translate this into french"}]
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as hub:
        asked = []
        hub._http.event_hooks["request"].append(lambda r: asked.append(r.url.path))  # the real requests, counted
        hub.push(write_adapter(tmp_path / "a", seed=1, hidden=HIDDEN), "alice/first")
        for _ in range(3):
            hub.route(model=model, tokenizer=tok, messages=messages, method="arrow")
        assert asked.count("/v1/route/modules") == 1 and asked.count("/v1/route") == 3
        hub.push(write_adapter(tmp_path / "b", seed=2, hidden=HIDDEN), "alice/second")
        assert {r["id"] for r in hub.route(model=model, tokenizer=tok, messages=messages, method="arrow")} == {
            "alice/first",
            "alice/second",
        }
        assert asked.count("/v1/route/modules") == 2
