"""The tiny base model's pre-training gradient: micro-batches, and their spread over forked worker processes."""

import itertools
import multiprocessing
import os
import random
import signal

import pytest
import torch

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, chat_text, pretrain, train_tokenizer
from frpo_workflow.data.toy import build_toy_world
from frpo_workflow.shared_grad import SharedGradients, _chunk_sizes, batch_loss_backward, micro_batches

CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400,
                      pretrain_epochs=2, batch_size=16, seed=3)


@pytest.fixture(scope="module")
def corpus():
    return build_toy_world(0, {"pretrain": 120})["pretrain"]


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer([f"{r['prompt']} {r['completion']}" for r in corpus], CFG.vocab_size)


@pytest.fixture(scope="module")
def rows(corpus, tok):
    return [tok(chat_text(tok, r["prompt"], r["completion"]), add_special_tokens=False)["input_ids"] for r in corpus]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_micro_batches_give_the_one_padded_batch_loss_and_gradient(tok, rows, parts):
    # The reference: one right-padded batch with an attention mask, HF's own mean token loss.
    batch = rows[:13]  # 13 rows: micro-batches of unequal size
    assert len({len(x) for x in batch}) > 3  # lengths differ: the micro-batches pad differently
    model = build_tiny_model(tok, CFG)
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(batch):
        ids[row, : len(x)], mask[row, : len(x)] = torch.tensor(x), 1
    reference = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = batch_loss_backward(model, batch, tok.pad_token_id, parts=parts)
    # Equal up to float32 rounding (the sums run in another order); a wrong mean or a lost row is ~1e-2.
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    for grad, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_chunks_have_the_smallest_largest_padded_size(parts):
    # Against every way of cutting the sorted lengths into `parts` consecutive chunks.
    rng = random.Random(parts)
    for _ in range(20):
        lengths = sorted(rng.randint(5, 40) for _ in range(rng.randint(parts, 14)))
        def cost(sizes):
            ends = list(itertools.accumulate(sizes))
            return max(size * lengths[end - 1] for size, end in zip(sizes, ends))
        best = min(cost([b - a for a, b in zip((0, *cuts), (*cuts, len(lengths)))])
                   for cuts in itertools.combinations(range(1, len(lengths)), parts - 1))
        sizes = _chunk_sizes(lengths, parts)
        assert sum(sizes) == len(lengths) and len(sizes) <= parts and min(sizes) > 0
        assert cost(sizes) == best


def test_micro_batches_keep_every_row_once(rows):
    batch = rows[:16]
    chunks = micro_batches(batch, 0, 3)
    got = sorted(tuple(r[: int((l != -100).sum())].tolist()) for ids, labels in chunks for r, l in zip(ids, labels))
    assert got == sorted(map(tuple, batch))


def _pretrained(tok, corpus, workers):
    model = build_tiny_model(tok, CFG)
    stats = pretrain(model, tok, corpus, CFG, log=lambda *_: None, workers=workers)
    return stats, {k: v.clone() for k, v in model.state_dict().items()}


def test_two_workers_give_the_weights_of_one_process_bit_for_bit(tok, corpus, one_thread):
    alone_stats, alone = _pretrained(tok, corpus, 1)
    stats, weights = _pretrained(tok, corpus, 2)
    assert stats == alone_stats and stats["steps"] == 15
    for name, value in alone.items():
        assert torch.equal(weights[name], value), name
    assert not multiprocessing.active_children()  # the workers are gone
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("workers", [3, 4])
def test_more_workers_give_the_gradient_of_as_many_micro_batches_in_turn(tok, rows, one_thread, workers):
    batch = rows[:23]
    model = build_tiny_model(tok, CFG).train()
    want_loss = batch_loss_backward(model, batch, tok.pad_token_id, parts=workers)
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with SharedGradients(model, workers) as gradients:
        assert len(multiprocessing.active_children()) == workers - 1
        loss = gradients.loss_backward(batch, tok.pad_token_id)
        assert loss == want_loss
        for p, g in zip(model.parameters(), want):
            assert torch.equal(p.grad, g)
        # A second batch on the same workers: they read the weights as this process changed them.
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        model.zero_grad(set_to_none=True)
        loss = gradients.loss_backward(batch, tok.pad_token_id)
    model.zero_grad(set_to_none=True)
    assert loss == batch_loss_backward(model, batch, tok.pad_token_id, parts=workers)
    assert not multiprocessing.active_children()


def test_a_dead_worker_fails_the_step_and_names_itself(tok, rows):
    model = build_tiny_model(tok, CFG).train()
    with pytest.raises(RuntimeError, match=r"pre-training worker 1 died"):
        with SharedGradients(model, 2) as gradients:
            gradients.loss_backward(rows[:16], tok.pad_token_id)
            (worker,) = multiprocessing.active_children()
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            gradients.loss_backward(rows[:16], tok.pad_token_id)
    assert not multiprocessing.active_children()


def test_a_worker_error_comes_back_with_its_traceback(tok, rows):
    model = build_tiny_model(tok, CFG).train()
    bad = [*rows[:15], [len(tok) + 5] * 60]  # an id past the vocabulary, in the longest row: the worker's chunk
    with pytest.raises(RuntimeError, match=r"(?s)pre-training worker 1 failed:.*IndexError"):
        with SharedGradients(model, 2) as gradients:
            gradients.loss_backward(bad, tok.pad_token_id)
    assert not multiprocessing.active_children()
