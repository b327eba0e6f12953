"""Process bodies for the Ulysses tests: two processes on gloo
(torch.multiprocessing.spawn), each writing what it computed to a file the
test reads back. Kept out of the test modules so the spawned processes
import only this."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# All-to-all check sizes: heads and tokens per rank chosen odd-ish so a
# transposed layout cannot pass by accident.
COMM_SHAPE = dict(batch=2, chunk=5, heads_per_rank=3, head_dim=4)
COMM_ORDER = (4, 0, 5, 2, 1, 3)  # a permutation of 6 heads (2 ranks x 3)


def _init(rank: int, world: int, port: int) -> None:
    # A bounded timeout: a rank that dies must fail the test, not hang it.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5))


def _leave_together() -> None:
    """Both ranks finish their work before either tears the group down
    (torch's documented shutdown order; a rank leaving early would otherwise
    close connections the other may still be using)."""
    dist.barrier()


def comm_full_input(world: int, seed: int = 0) -> torch.Tensor:
    s = COMM_SHAPE
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s["batch"], world * s["chunk"], world * s["heads_per_rank"], s["head_dim"],
                       generator=g, dtype=torch.float64)


def comm_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Ours and yunchang's all-to-all on the same chunk, both directions."""
    _init(rank, world, port)
    try:
        from yunchang.comm.all_to_all import all_to_all_4D

        from sparse_vdit.parallel import comm

        chunk = COMM_SHAPE["chunk"]
        x = comm_full_input(world)[:, rank * chunk:(rank + 1) * chunk].contiguous()
        order = torch.tensor(COMM_ORDER)
        ours = comm.seq_to_heads([x, 2 * x], None)
        ordered = comm.seq_to_heads([x, 2 * x], None, order)  # the order folded into one send of two tensors
        identity = comm.seq_to_heads([x], None, torch.arange(len(COMM_ORDER)))[0]
        result = {
            "ours": ours[0], "ours_second": ours[1],
            "yunchang": all_to_all_4D(x, scatter_idx=2, gather_idx=1),
            "back_ours": comm.heads_to_seq(ours[0], None),
            "back_yunchang": all_to_all_4D(ours[0], scatter_idx=1, gather_idx=2),
            "ordered": ordered[0], "ordered_second": ordered[1],
            "ordered_back": comm.heads_to_seq(ordered[0], None, order),
            "identity": identity, "identity_back": comm.heads_to_seq(identity, None, torch.arange(len(COMM_ORDER))),
            "input": x,
        }
        torch.save(result, os.path.join(out_dir, f"comm_{rank}.pt"))
        _leave_together()
    finally:
        dist.destroy_process_group()


# ---- the tiny real Wan ------------------------------------------------------
WAN = dict(num_heads=4, head_dim=8, num_layers=2)
LATENT = dict(frames=3, height=10, width=14)  # grid 3 x 5 x 7 = 105 tokens: odd, padded to 106
BLOCK = 16  # block_m = block_n in the tests: small blocks so patterns are sparse at 105 tokens


def wan_model(comfy_path: str):
    import comfy_harness

    comfy_harness.import_comfy(comfy_path)
    model = comfy_harness.tiny_wan_model(seed=0, **WAN)  # float32: ComfyUI's RoPE takes no float64
    return model


def wan_inputs(model):
    import comfy_harness

    positive, negative = comfy_harness.make_conds(model, seed=1)
    latent = comfy_harness.empty_latent(**LATENT)
    return positive, negative, latent


def _failing(*args, **kwargs):
    raise RuntimeError("injected kernel failure")


def wan_worker(rank: int, world: int, port: int, comfy_path: str, scenarios: list, out_dir: str) -> None:
    """Sample the tiny Wan under Ulysses for each scenario:
    {"name", "plan": plan JSON or None, "balance", "fail_rank": rank whose
    sparse path raises, or None, "ring": yunchang's ring degree (1),
    "cost_model": CostModel fields for auto (optional)}. Raylight's USP is stood in for by
    SequenceSplit (its pad-and-split) and dense_usp_forward (its attention),
    and the pack goes on through the Raylight node's worker patch."""
    _init(rank, world, port)
    try:
        import yunchang

        import comfy_harness
        from sparse_vdit.parallel import raylight, sequence_split, ulysses
        from sparse_vdit.parallel.balance import CostModel

        results = {}
        for scenario in scenarios:
            ring = scenario.get("ring", 1)  # ring > 1: Raylight's own path must serve
            yunchang.set_seq_parallel_pg(world // ring, ring, rank, world)
            model = wan_model(comfy_path)
            positive, negative, latent = wan_inputs(model)
            diffusion_model = model.model.diffusion_model
            split = sequence_split.SequenceSplit(diffusion_model)
            sequence_split.install_dense_usp(diffusion_model)  # what Raylight's load-time patch does
            patched = model
            if scenario["plan"] is not None:
                patched = raylight.patch_worker(model, scenario["plan"], None, 0.0, "reference",
                                                scenario["balance"], block_m=BLOCK, block_n=BLOCK,
                                                cost_model=CostModel(**scenario.get("cost_model", {})))
            saved = ulysses.layer_attention
            if scenario.get("fail_rank") == rank:
                ulysses.layer_attention = _failing
            try:
                out = comfy_harness.sample(patched, positive, negative, latent, seed=2)
            finally:
                ulysses.layer_attention = saved
                split.remove()
            counts: dict = {}
            for state in ulysses.states(diffusion_model):
                for key, value in state.counts.items():
                    counts[key] = counts.get(key, 0) + value
            results[scenario["name"]] = {"out": out, "counts": counts}
        torch.save(results, os.path.join(out_dir, f"wan_{rank}.pt"))
        _leave_together()
    finally:
        dist.destroy_process_group()
