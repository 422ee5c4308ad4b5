"""pretrain.distributed: env:// set-up, single-process fallbacks and a real two-process gloo group on CPU."""
from __future__ import annotations

import functools
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pretrain import distributed
from pretrain.distributed import DistInfo

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_without_env(clean_env):
    info = distributed.init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.distributed is False and info.is_main is True
    assert not dist.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    distributed.barrier()  # a no-op, must not raise without a process group
    x = torch.tensor([1.0, 2.0, 3.0])
    mean = distributed.all_reduce_mean(x)
    assert torch.equal(mean, x) and mean is not x
    total = distributed.all_reduce_sum(x)
    assert torch.equal(total, x) and total is not x
    mean += 10
    assert torch.equal(x, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(distributed.all_gather(x), x)
    distributed.cleanup()  # nothing to destroy: must not raise
    assert not dist.is_initialized()


def test_world_size_not_an_integer(clean_env):
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two'"):
        distributed.init_distributed("cpu")


def test_world_size_two_without_rendezvous(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError) as err:
        distributed.init_distributed("cpu")
    assert "RANK, MASTER_ADDR, MASTER_PORT not set" in str(err.value)
    assert not dist.is_initialized()
    clean_env.setenv("RANK", "1")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but MASTER_PORT not set"):
        distributed.init_distributed("cpu")


class Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule: the real module sits in `_orig_mod`."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self._orig_mod = inner


def test_unwrap_and_prepare_single_process():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert distributed.unwrap(net) is net
    assert distributed.unwrap(Compiled(net)) is net
    assert distributed.unwrap(Compiled(Compiled(net))) is net
    prepared = distributed.prepare_model(net, DistInfo())
    assert prepared is net
    assert isinstance(prepared[1], nn.BatchNorm2d) and not isinstance(prepared[1], nn.SyncBatchNorm)


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of a two-process gloo group; writes what it saw to <out_dir>/rank<rank>.json."""
    result: dict = {}
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        torch.set_num_threads(1)
        info = distributed.init_distributed("cpu")
        result["info"] = [info.rank, info.world_size, info.local_rank, str(info.device),
                          info.distributed, info.is_main]
        result["helpers"] = [distributed.world_size(), distributed.rank(), distributed.is_main()]
        x = torch.tensor([float(rank), 10.0 * (rank + 1)])
        result["mean"] = distributed.all_reduce_mean(x).tolist()
        result["input_after_mean"] = x.tolist()
        result["sum"] = distributed.all_reduce_sum(x).tolist()
        result["input_after_sum"] = x.tolist()
        rows = 3 if rank == 0 else 1
        t = torch.stack([torch.tensor([float(rank), float(r)]) for r in range(rows)])
        result["gathered"] = distributed.all_gather(t).tolist()
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        model = distributed.prepare_model(net, info)
        result["ddp"] = isinstance(model, nn.parallel.DistributedDataParallel)
        result["bn"] = type(model.module[1]).__name__
        result["unwrap_is_net"] = distributed.unwrap(model) is net
        distributed.barrier()
        distributed.cleanup()
        result["initialized_after_cleanup"] = dist.is_initialized()
    except BaseException:  # noqa: BLE001 - reported to the parent test
        result["error"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def spawn_ranks(target, out_dir, world: int = 2) -> list:
    """`world` started processes running target(rank, port, out_dir) on a free local port."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port, str(out_dir))) for r in range(world)]
    for p in procs:
        p.start()
    return procs


def _rank_main(body, rank: int, port: int, out_dir: str, world: int = 2) -> None:
    """One rank of a `world`-process gloo group on CPU (one thread): writes body(info) (a JSON-able dict), or
    the traceback of what failed, to <out_dir>/rank<rank>.json."""
    result: dict = {}
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        torch.set_num_threads(1)
        info = distributed.init_distributed("cpu")
        result.update(body(info))
        distributed.cleanup()
    except BaseException:  # noqa: BLE001 - reported to the parent test
        result["error"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def run_ranks(body, out_dir, world: int = 2, timeout: float = 120) -> list[dict]:
    """body(info) -> dict (a module-level function) on every rank of a `world`-process gloo group; the ranks'
    dicts in rank order. Fails naming the ranks still running after `timeout` s, or a rank's traceback."""
    procs = spawn_ranks(functools.partial(_rank_main, body, world=world), out_dir, world)
    for p in procs:
        p.join(timeout=timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} did not finish within {timeout} s"
    results = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
    for r, got in enumerate(results):
        assert "error" not in got, f"rank {r}: {got['error']}"
    return results


def _sum_of_ranks(info) -> dict:
    return {"rank": info.rank, "sum": distributed.all_reduce_mean(torch.tensor(float(info.rank))).item() * 2}


def test_run_ranks_returns_each_ranks_result(tmp_path):
    assert run_ranks(_sum_of_ranks, tmp_path) == [{"rank": 0, "sum": 1.0}, {"rank": 1, "sum": 1.0}]


def test_two_process_gloo_group(tmp_path):
    procs = spawn_ranks(_worker, tmp_path)
    for p in procs:
        p.join(timeout=120)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"workers {hung} did not finish within 120 s"
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, got in enumerate(res):
        assert "error" not in got, got["error"]
        assert got["info"] == [r, 2, r, "cpu", True, r == 0]
        assert got["helpers"] == [2, r, r == 0]
        assert got["mean"] == [0.5, 15.0]
        assert got["input_after_mean"] == got["input_after_sum"] == [float(r), 10.0 * (r + 1)]
        assert got["sum"] == [1.0, 30.0]
        assert got["gathered"] == [[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 0.0]]
        assert got["ddp"] is True and got["bn"] == "BatchNorm2d" and got["unwrap_is_net"] is True
        assert got["initialized_after_cleanup"] is False
    assert [p.exitcode for p in procs] == [0, 0]


def test_collective_timeout_from_env(clean_env):
    clean_env.delenv("DIST_TIMEOUT_S", raising=False)
    assert distributed.collective_timeout().total_seconds() == distributed.DEFAULT_TIMEOUT_S == 600
    clean_env.setenv("DIST_TIMEOUT_S", "2.5")
    assert distributed.collective_timeout().total_seconds() == 2.5
    for bad in ("soon", "0", "-3"):
        clean_env.setenv("DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="DIST_TIMEOUT_S"):
            distributed.collective_timeout()


def _stalled_peer(rank: int, port: int, out_dir: str) -> None:
    """Rank 1 joins the group and then never takes part in a collective (a hung or unreachable peer);
    rank 0's all_reduce must give up after DIST_TIMEOUT_S instead of waiting for ever."""
    import time
    result: dict = {}
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", DIST_TIMEOUT_S="3")
    distributed.init_distributed("cpu")
    if rank == 1:
        Path(out_dir, "rank0.json").exists() or time.sleep(30)  # outlives rank 0's timeout; killed by the test
        return
    t0 = time.time()
    try:
        distributed.all_reduce_mean(torch.ones(1))
        result["error"] = None
    except Exception as e:  # noqa: BLE001 - reported to the parent test
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = time.time() - t0
    Path(out_dir, "rank0.json").write_text(json.dumps(result))
    os._exit(0)  # leave without the destroy handshake the stalled peer would never answer


def test_collective_with_stalled_peer_times_out(tmp_path):
    procs = spawn_ranks(_stalled_peer, tmp_path)
    procs[0].join(timeout=60)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["error"] and "timed out" in got["error"].lower(), got
    assert 2.5 <= got["seconds"] < 30, got
