"""Data-parallel gradients on one CPU: forked processes that each compute one micro-batch's gradient on
weights they share with the training process (the tiny base model's pre-training on a job's cores).

Why processes and not intra-op threads: the tiny model's ops are too small to split well (two threads ran
a pre-training step ~1.55x faster than one), and Python threads would serialise on the GIL. Each process
runs one thread on its own micro-batch instead. The weights live in shared memory, so the workers see each
optimizer step without a copy; a worker's gradient comes back through a shared buffer.

Spreading the work does not change the result: each micro-batch is computed by the same ops on one thread,
and the training process adds their gradients in micro-batch order, as sequential accumulation would. A
batch is cut into max(2, workers) micro-batches, so 1 and 2 workers give the same weights bit for bit (when
the one process also runs on one thread), and 3 or more the weights of one process cutting as finely, which
differ from those by float rounding only (tests/unit/test_shared_grad.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback

import torch

# Pre-training splits each batch into at least this many micro-batches of similar lengths, each padded to
# its own longest row: random batches are ~30% padding, and the same batch and mean loss with a third of
# the padding ran 100 -> 90 ms a step on 2 threads.
MIN_MICRO_BATCHES = 2


def _chunk_sizes(lengths: list[int], parts: int) -> list[int]:
    """Row counts of at most `parts` consecutive chunks of the sorted `lengths`, chosen so that the largest
    padded chunk (rows x its longest row) is as small as possible: the work per micro-batch is even."""
    def greedy(limit: int) -> list[int]:
        sizes, count = [], 0
        for length in lengths:  # sorted, so `length` is the longest row of the chunk so far
            if count and (count + 1) * length > limit:
                sizes.append(count)
                count = 0
            count += 1
        return sizes + [count]

    low, high = lengths[-1], len(lengths) * lengths[-1]
    while low < high:  # the smallest limit at which `parts` chunks suffice
        mid = (low + high) // 2
        if len(greedy(mid)) <= parts:
            high = mid
        else:
            low = mid + 1
    return greedy(low)


def micro_batches(batch: list[list[int]], pad_id: int, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) per micro-batch: rows sorted by length, cut into at most `parts` chunks of even
    padded size, right-padded, pads labelled -100. Right padding needs no attention mask in a causal LM:
    no real token attends to a pad."""
    rows = sorted(batch, key=len)
    out, start = [], 0
    for size in _chunk_sizes([len(x) for x in rows], parts):
        chunk = rows[start:start + size]
        start += size
        width = len(chunk[-1])
        input_ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        for row, x in enumerate(chunk):
            input_ids[row, : len(x)] = labels[row, : len(x)] = torch.tensor(x)
        out.append((input_ids, labels))
    return out


def micro_batch_loss_backward(model, input_ids: torch.Tensor, labels: torch.Tensor, n_targets: int) -> float:
    """One micro-batch's share of the batch's mean token loss, its gradient accumulated into the model."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum") / n_targets
    loss.backward()
    return loss.item()


def batch_loss_backward(model, batch: list[list[int]], pad_id: int, parts: int = MIN_MICRO_BATCHES) -> float:
    """The causal-LM loss of `batch` (mean over every predicted token of every row), its gradient
    accumulated into the model over up to `parts` micro-batches in turn; returns the loss."""
    n_targets = sum(len(x) - 1 for x in batch)  # each row predicts all but its first token
    return sum(micro_batch_loss_backward(model, *chunk, n_targets) for chunk in micro_batches(batch, pad_id, parts))


def _worker(model, conn, parent_ends: list, grads: list[torch.Tensor]) -> None:
    """A worker's loop: receive a micro-batch, write its gradient into `grads`, answer with its loss."""
    for end in parent_ends:  # else the training process's death would not end recv() with EOFError
        end.close()
    # Inherited from the job: a stop signal ends the worker (its parent cleans up); Ctrl-C is the parent's.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    params = list(model.parameters())
    try:
        while (job := conn.recv()) is not None:
            loss = micro_batch_loss_backward(model, *job)
            for p, g in zip(params, grads):
                g.copy_(p.grad)
                p.grad = None
            conn.send(("ok", loss))
    except EOFError:  # the training process is gone
        pass
    except BaseException:  # noqa: BLE001 - every failure goes back to the training process, named
        conn.send(("error", traceback.format_exc()))
    finally:
        os._exit(0)  # a forked copy of the job: skip its atexit handlers (MLflow runs, loggers)


class SharedGradients:
    """The batch's loss and gradient over `workers` processes (this one and workers - 1 forked ones).

    Use as a context manager; `loss_backward(batch, pad_id)` accumulates the batch's mean-token-loss
    gradient into `model`'s `.grad` and returns the loss. With one worker it runs the micro-batches in turn,
    here. Forking needs Linux; elsewhere the work runs here, in turn. While it is open this process runs its
    ops on one thread; the thread count is restored on exit.
    """

    def __init__(self, model, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.model, self.params = model, list(model.parameters())
        self.workers = workers if sys.platform.startswith("linux") else 1
        self.parts = max(MIN_MICRO_BATCHES, self.workers)
        self._procs: list = []
        self._conns: list = []
        self._grads: list[list[torch.Tensor]] = []
        self._threads = torch.get_num_threads()

    def __enter__(self) -> "SharedGradients":
        if self.workers == 1:
            return self
        for p in self.params:
            p.data.share_memory_()  # in place: the forked workers map the same weights
        # The tokenizer has used its thread pool here; the workers never tokenize, so its fork warning is noise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        context = multiprocessing.get_context("fork")
        try:
            for _ in range(self.workers - 1):
                grads = [torch.zeros_like(p).share_memory_() for p in self.params]
                here, there = context.Pipe()
                proc = context.Process(target=_worker, args=(self.model, there, [*self._conns, here], grads),
                                       daemon=True)
                proc.start()
                there.close()
                self._procs.append(proc), self._conns.append(here), self._grads.append(grads)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs, self._conns, self._grads = [], [], []
        torch.set_num_threads(self._threads)

    def loss_backward(self, batch: list[list[int]], pad_id: int) -> float:
        if not self._conns:
            return batch_loss_backward(self.model, batch, pad_id, self.parts)
        n_targets = sum(len(x) - 1 for x in batch)
        # At most `parts` = workers chunks: chunk 0 runs here, chunk i > 0 on worker i - 1, all at once.
        chunks = micro_batches(batch, pad_id, self.parts)
        for w, chunk in enumerate(chunks[1:]):
            try:
                self._conns[w].send((*chunk, n_targets))
            except OSError:
                raise self._died(w) from None
        losses = [micro_batch_loss_backward(self.model, *chunks[0], n_targets)]
        losses += [self._receive(w) for w in range(len(chunks) - 1)]  # in chunk order
        return sum(losses)

    def _receive(self, w: int) -> float:
        try:
            status, value = self._conns[w].recv()
        except EOFError:
            raise self._died(w) from None
        if status != "ok":
            raise RuntimeError(f"pre-training worker {w + 1} failed:\n{value}")
        for p, g in zip(self.params, self._grads[w]):  # in chunk order: the sums of sequential accumulation
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        return value

    def _died(self, w: int) -> RuntimeError:
        self._procs[w].join(timeout=1)
        return RuntimeError(f"pre-training worker {w + 1} died (exit code {self._procs[w].exitcode})")
