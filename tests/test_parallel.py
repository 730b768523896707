"""vla_lab.parallel with its ranks simulated in this process: the shards of N ranks are the single process's
work, ``gather`` gives every rank every rank's object in rank order, ``run_on_main`` runs on rank 0 only.

The ranks are threads (``testkit.run_ranks``); the commands' "N ranks give the records of one" checks run the
same way where a real torchrun run of the same command is tested elsewhere (one per command).
"""

from __future__ import annotations

import threading

import pytest
from testkit import run_ranks

from vla_lab import parallel
from vla_lab.errors import InputError

KEYS = [("libero_spatial", t, i) for t in (2, 0, 1) for i in (1, 0)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("items", [KEYS, list(range(10, 0, -1)), [3, 1, 3, 2, 1], [], ["only"]])
def test_the_shards_of_every_rank_are_the_single_process_work_round_robin(items, size):
    shards = [parallel.shard(items, parallel.Ranks(rank, size, rank)) for rank in range(size)]
    assert parallel.shard(items, parallel.Ranks()) == sorted(items)
    # round robin over the sorted items: interleaving the shards rank by rank gives back the sorted list
    interleaved = [shards[i % size][i // size] for i in range(len(items))]
    assert interleaved == sorted(items)
    assert sum(len(s) for s in shards) == len(items) and max(map(len, shards)) - min(map(len, shards)) <= 1
    # the input's order does not matter: every rank sorts the same list
    assert shards == [parallel.shard(list(reversed(items)), parallel.Ranks(r, size, r)) for r in range(size)]


def test_the_threads_are_ranks_with_their_own_place():
    def place(ranks):
        assert parallel.ranks_from_env() == ranks
        with parallel.process_group("cpu") as same:
            assert same == ranks
        return ranks, threading.current_thread().name

    places = run_ranks(place, 3)
    assert [w for w, _ in places] == [parallel.Ranks(r, 3, r) for r in range(3)]
    assert len({name for _, name in places}) == 3


def test_gather_gives_every_rank_every_object_in_rank_order_as_copies():
    shared = {"mutable": []}

    def work(ranks):
        mine = {"rank": ranks.rank, "items": parallel.shard(KEYS, ranks), "shared": shared}
        first = parallel.gather(mine, ranks)
        first[ranks.rank]["shared"]["mutable"].append(ranks.rank)  # a copy: no other rank sees it
        second = parallel.gather(ranks.rank * 10, ranks)  # a second round does not mix with the first
        parallel.barrier(ranks)
        return first, second

    results = run_ranks(work, 3)
    for rank, (first, second) in enumerate(results):
        assert [g["rank"] for g in first] == [0, 1, 2] and second == [0, 10, 20]
        assert sorted(k for g in first for k in g["items"]) == sorted(KEYS)
        assert [g["shared"]["mutable"] for g in first] == [[rank] if r == rank else [] for r in range(3)]
    assert shared == {"mutable": []}


def test_run_shards_gives_every_rank_every_result_in_key_order_and_skips_finished_keys():
    keys = [5, 1, 4, 2, 3, 0, 6]
    done = {4: "held 4", 0: "held 0"}

    def work(ranks):
        computed = []

        def compute(key):
            computed.append(key)
            return f"rank {ranks.rank} made {key}"

        return parallel.run_shards(keys, compute, ranks, done=done), computed

    one = parallel.run_shards(keys, lambda k: f"made {k}", parallel.Ranks(), done=done)
    assert list(one) == keys and one[4] == "held 4" and one[5] == "made 5"
    results = run_ranks(work, 2)
    assert results[0][0] == results[1][0] and list(results[0][0]) == keys
    assert results[0][1] == [1, 3, 6] and results[1][1] == [2, 5]  # round robin over the unfinished keys, sorted
    assert {k: v.split(" made ")[-1] for k, v in results[0][0].items() if k not in done} == {
        k: str(k) for k in keys if k not in done}


def test_run_shard_groups_walks_each_position_through_a_contiguous_part():
    keys = list(range(11))
    groups = []

    def compute(group):
        groups.append(list(group))
        return [f"made {k}" for k in group]

    out = parallel.run_shard_groups(keys, compute, parallel.Ranks(), 4, done={5: "held 5"})
    assert list(out) == keys and out[5] == "held 5" and out[6] == "made 6"
    # the 10 unfinished keys in parts [0, 1, 2], [3, 4, 6], [7, 8], [9, 10]: position i walks part i
    assert groups == [[0, 3, 7, 9], [1, 4, 8, 10], [2, 6]]
    assert parallel.run_shard_groups([1, 2], compute, parallel.Ranks(), 5) == {1: "made 1", 2: "made 2"}
    assert groups[-1] == [1, 2]

    def short(group):
        return ["one result"]

    with pytest.raises(RuntimeError, match="compute gave 1 results for 2 keys"):
        parallel.run_shard_groups([1, 2], short, parallel.Ranks(), 2)


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ranks = parallel.ranks_from_env()
    assert ranks == parallel.Ranks(0, 1, 0) and ranks.is_main and not ranks.distributed
    assert parallel.gather("x", ranks) == ["x"] and parallel.run_on_main(lambda: 5, ranks) == 5
    parallel.barrier(ranks)


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK/WORLD_SIZE: got rank 2 of 2"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE: got 'two', expected an integer"),
    ({"WORLD_SIZE": "0"}, "RANK/WORLD_SIZE: got rank 0 of 0"),
])
def test_a_bad_torchrun_environment_is_an_input_error(monkeypatch, env, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=f"^{message}"):
        parallel.ranks_from_env()


def test_run_on_main_runs_once_and_every_rank_gets_its_result_or_its_error():
    calls = []

    def claim():
        calls.append(threading.current_thread().name)
        return {"claimed": len(calls)}

    assert run_ranks(lambda ranks: parallel.run_on_main(claim, ranks), 3) == [{"claimed": 1}] * 3
    assert calls == ["rank-0"]

    def refuse():
        raise InputError("--out: holds an earlier run")

    def each(ranks):
        try:
            parallel.run_on_main(refuse, ranks)
        except InputError as exc:
            return str(exc)
        return None

    assert run_ranks(each, 3) == ["--out: holds an earlier run"] * 3


def test_a_rank_that_fails_or_leaves_early_stops_the_others_waiting():
    def broken(ranks):
        if ranks.rank == 1:
            raise RuntimeError("rank 1 died")
        return parallel.gather(ranks.rank, ranks)

    with pytest.raises(RuntimeError, match="rank 1 died"):
        run_ranks(broken, 2)

    def leaves(ranks):
        if ranks.rank == 0:
            return None
        return parallel.gather(ranks.rank, ranks)

    with pytest.raises(threading.BrokenBarrierError):
        run_ranks(leaves, 2)
