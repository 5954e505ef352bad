"""Text search and routing by text, with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer

DESCRIPTIONS = {
    "summarize-news": "Summarizes long news articles into a few bullet points.",
    "en-fr": "Translates English sentences into idiomatic French.",
    "py-docstrings": "Writes Python functions from docstrings.",
    "gsm-math": "Solves grade-school arithmetic word problems step by step.",
    "review-sentiment": "Classifies customer reviews as positive or negative.",
    "medical-qa": "Answers medical questions about symptoms and medications.",
    "text-to-sql": "Generates SQL queries from natural language questions about a database.",
    "sonnets": "Writes rhyming poems in the style of Shakespeare.",
    "ner": "Extracts named entities such as people, places and organizations.",
    "grammar": "Corrects grammar and spelling mistakes in essays.",
    "airline-support": "Chats in a friendly tone as a customer support agent for an airline.",
    "legalese": "Explains legal contracts in plain language.",
    "toxicity": "Detects toxic or hateful comments.",
    "recipes": "Converts recipes into shopping lists.",
    "history-trivia": "Answers trivia questions about world history.",
    "js-tests": "Writes unit tests for JavaScript code.",
    "paper-digest": "Summarizes scientific papers for a lay audience.",
    "product-copy": "Generates product descriptions for an online store.",
    "travel": "Helps plan travel itineraries and suggests hotels.",
    "calculus": "Solves calculus problems and shows derivations.",
    "ja-en": "Translates Japanese to English.",
    "business-email": "Writes formal business emails.",
    "tweet-sentiment": "Tags the sentiment of tweets.",
    "rust-help": "Answers questions about the Rust programming language.",
    "reading-tutor": "Tutors children in reading comprehension.",
    "regex": "Generates regular expressions from descriptions.",
    "horror": "Writes horror short stories.",
    "invoices": "Extracts dates and amounts from invoices.",
    "movies": "Recommends movies based on preferences.",
    "chemistry": "Predicts chemical properties of molecules from SMILES strings.",
}

# Each query shares no word with its adapter's description.
QUERIES = {
    "what should I buy at the supermarket to cook this dish": "recipes",
    "write select statements for my postgres schema": "text-to-sql",
    "flag abusive insults in forum posts": "toxicity",
    "how do you say good morning in Paris": "en-fr",
    "my head hurts, I have a fever; which pill helps?": "medical-qa",
    "a scary tale with ghosts": "horror",
}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture
def catalog(server: LiveServer, tmp_path: Path) -> LiveServer:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a")
    with server.client(token) as c:
        for name, description in DESCRIPTIONS.items():
            r = c.post(f"/v1/adapters/alice/{name}", files=upload_parts(folder), data={"description": description})
            assert r.status_code == 201, r.text
    return server


def test_search_finds_adapters_by_meaning(catalog: LiveServer) -> None:
    with catalog.client() as c:
        for query, expected in QUERIES.items():
            assert not words(query) & words(DESCRIPTIONS[expected]), query
            r = c.post("/v1/search", json={"query": query, "limit": 5})
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert results[0]["id"] == f"alice/{expected}", (query, results)
            assert results[0]["score"] > results[1]["score"]
            assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)


def test_search_respects_filters_visibility_and_edits(catalog: LiveServer) -> None:
    token = catalog.token("alice")
    with catalog.client(token) as owner, catalog.client() as anon:
        query = {"query": "flag abusive insults in forum posts", "limit": 3}
        assert anon.post("/v1/search", json=query).json()["results"][0]["id"] == "alice/toxicity"
        owner.patch("/v1/adapters/alice/toxicity", json={"visibility": "private"})
        assert "alice/toxicity" not in [x["id"] for x in anon.post("/v1/search", json=query).json()["results"]]
        assert owner.post("/v1/search", json=query).json()["results"][0]["id"] == "alice/toxicity"
        # An edited description is searched from then on.
        owner.patch("/v1/adapters/alice/horror", json={"description": "Moderates hostile, insulting forum posts."})
        top = anon.post("/v1/search", json=query).json()["results"][0]["id"]
        assert top == "alice/horror"
        none = anon.post("/v1/search", json={**query, "base_model": "other/base"}).json()["results"]
        assert none == []
        bad = anon.post("/v1/search", json={"query": ""})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_route_text_uses_examples(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    examples = {
        "math": ["What is 17 times 23?", "Solve for x: 2x + 3 = 11", "Compute the integral of x^2"],
        "cooking": ["How long do I boil an egg?", "Substitute for buttermilk in pancakes", "Best way to sear steak"],
        "code": ["Reverse a linked list in Python", "Fix this segfault in my C loop", "Explain async/await in JS"],
    }
    with server.client(token) as c:
        for name, lines in examples.items():
            folder = write_adapter(
                tmp_path / name,
                extra_files={"examples.jsonl": "\n".join(json.dumps({"input": t}) for t in lines).encode()},
            )
            assert c.post(f"/v1/adapters/alice/{name}", files=upload_parts(folder)).status_code == 201
        # an adapter without examples is not a candidate for routing by text
        assert c.post("/v1/adapters/alice/plain", files=upload_parts(write_adapter(tmp_path / "p"))).status_code == 201
        for text, expected in [
            ("how many minutes should pasta cook", "cooking"),
            ("what is the derivative of sin(x)", "math"),
            ("my rust program panics on unwrap", "code"),
        ]:
            r = c.post("/v1/route/text", json={"text": text})
            assert r.status_code == 200, r.text
            ids = [x["id"] for x in r.json()["results"]]
            assert ids[0] == f"alice/{expected}" and "alice/plain" not in ids
