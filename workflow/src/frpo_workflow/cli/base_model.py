"""CLI of the base_model stage: build the tiny model, or record a local/hub model it points to.

    python -m frpo_workflow.cli.base_model --spec '{"model": {...}, "corpus": "pretrain"}' \
        --data results/data/datasets/pretrain --out results/base_model/tiny
"""

import os

import torch

from ..base_model import TinyModelConfig, build_tiny_base_model, check_model_files, snapshot, write_model_ref
from ..data.loaders import read_dataset
from ..devices import check_devices
from ..provenance import path_sha256
from .common import parser, setup_logging, tracked_job


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--data", default=None, help="the pre-training corpus's dataset folder (source tiny)")
    args = p.parse_args(argv)
    log = setup_logging()
    check_devices()  # fail before any work when the job's GPUs are not there
    with tracked_job(args, inputs={"data": args.data} if args.data else {}) as (run, spec, out, extra):
        model = spec["model"]
        if model["source"] == "tiny":
            records = read_dataset(args.data)
            # One pre-training process per thread the job was given (OMP_NUM_THREADS): the tiny model's ops
            # are too small for intra-op threads to share well. The weights are the same for any count.
            workers = torch.get_num_threads()
            log.info("pre-training over %d process(es)", workers)
            summary = build_tiny_base_model(records, out, TinyModelConfig(**model.get("tiny", {})), log=log.info,
                                            workers=workers)
        else:
            if model["source"] == "local":
                path = os.path.abspath(model["path"])
                if not os.path.isdir(path):
                    raise FileNotFoundError(f"base model source 'local': no directory at path {path}")
                # A local folder has no revision to pin: its content hash is what provenance can record.
                summary = {"source": "local", "path": path, "sha256": path_sha256(path)}
            else:  # hf: a pinned snapshot; HF_HUB_OFFLINE=1 makes this a cache lookup
                summary = snapshot(model["repo_id"], model.get("revision"))
            if model.get("pad_token"):
                summary["pad_token"] = model["pad_token"]
            write_model_ref(out, summary)
        # Checked here, without loading the weights, so a broken model or tokenizer fails this job and
        # not every downstream one.
        summary.update(check_model_files(out))
        extra["model"] = summary
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        log.info("base model: %s", summary)


if __name__ == "__main__":
    main()
