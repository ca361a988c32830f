"""The whole pipeline: every example is accounted for, stage by stage."""

import json
from types import SimpleNamespace

from selftrain.cli import DEMO_INTERACTIONS
from selftrain.data.clean import Exclusions, balance
from selftrain.data.curate import curate_interactions, read_snapshot, write_snapshot
from selftrain.data.pipeline import CurationConfig
from selftrain.store.records import FeedbackSummary

GOOD = 'def double(x: int) -> int:\n    """Twice x."""\n    return 2 * x\n'


def item(iid, *, code=GOOD, prompt="Write a Python function `double(x)` that returns twice x.",
         category="math", tests=None, entry_point=None, explanation="Multiplies the number by two.", **feedback):
    interaction = SimpleNamespace(id=iid, prompt=prompt, code=code, explanation=explanation, category=category,
                                  entry_point=entry_point, tests=tests)
    return interaction, FeedbackSummary(**feedback)


def func(name, body="return x + 1", category="math"):
    prompt = f"Write a Python function `{name}(x)` that computes the {name.replace('_', ' ')} of x."
    code = f'def {name}(x: int) -> int:\n    """The {name.replace("_", " ")} of x."""\n    {body}\n'
    return dict(prompt=prompt, code=code, category=category)


def test_every_example_is_accounted_for():
    items = [item(1, accepted=True, **func("add_one")),
             item(2, accepted=False, **func("add_two")),                                  # rejected
             item(3, rating=5, **func("add_one")),                                        # duplicate
             item(4, accepted=True, **func("add_three", body="return x +")),              # syntax error
             item(5, accepted=True, **{**func("add_four"), "code": 'password = "hunter2x9"\nprint(password)\n'}),
             # ^ off topic (and its secret scrubbed)
             item(6, accepted=True, **func("eval_task")),                                 # overlaps the suite
             item(7, accepted=True, **func("add_one", body="return 1 + x")),              # near... different code
             item(8, accepted=True, **func("upper", body="return str(x).upper()", category="strings"))]
    cur = curate_interactions(items, exclusions=Exclusions(entry_points={"eval_task"}),
                              config=CurationConfig(balance="none"))
    stats = cur.stats()
    assert stats["dropped"] == {"rejected": 1, "duplicate": 1, "syntax error": 1, "off topic": 1,
                                "overlaps evaluation suite": 1}
    assert stats["secrets"] == {"Secret Keyword": 1}
    assert [e.interaction_id for e in cur.examples] == [1, 7, 8]
    # counts chain from stage to stage, and each drop names its example and stage
    stages = stats["stages"]
    assert stages[0] == {**stages[0], "stage": "collect", "in": 8, "out": 7}
    assert all(a["out"] == b["in"] for a, b in zip(stages, stages[1:]))
    assert stages[-1]["out"] == stats["kept"] == 3
    assert {(d["ref"], d["stage"]) for d in stats["drops"]} == {
        ("interaction:2", "collect"), ("interaction:3", "dedupe"), ("interaction:4", "quality"),
        ("interaction:5", "quality"), ("interaction:6", "overlap")}
    assert all(e.quality >= 0.7 for e in cur.examples)


def test_synthesis_balance_and_snapshot(tmp_path):
    items = [item(i, accepted=True, **func(f"add_{w}", body=f"result = x + {i}\n    return result"))
             for i, w in enumerate(["one", "two", "three", "four"], start=1)]
    items += [item(10, accepted=True, **func("shout", body="text = str(x)\n    return text.upper()",
                                             category="strings"))]
    config = CurationConfig(synthetic_per_example=1, mutations=("rename",), balance="smallest", balance_floor=0)
    cur = curate_interactions(items, config=config)
    stats = cur.stats()
    # math holds more real examples than balancing keeps: its mutants would all be dropped,
    # so none is made; strings gets its one
    assert stats["synthetic"] == {"added": 1, "rejected": {}, "skipped for balance": 4}
    assert stats["categories"] == {"math": 2, "strings": 2}  # down-sampled to the smallest category
    assert stats["dropped"] == {"balance": 2}
    assert stats["input"] + stats["synthetic"]["added"] - sum(stats["dropped"].values()) == stats["kept"]
    synthetic = [e for e in cur.examples if e.source == "synthetic"]
    assert synthetic and all(e.origin and e.mutation == "rename" for e in synthetic)
    digest, path = write_snapshot(cur.examples, tmp_path)
    assert read_snapshot(path) == cur.examples and len(digest) == 64


def demo_items():
    """The bundled demo interactions (13 per category), all accepted, without their tests."""
    rows = [json.loads(line) for line in DEMO_INTERACTIONS.read_text().splitlines()]
    return [item(i + 1, accepted=True, prompt=r["prompt"], code=r["response"]["code"], category=r["category"],
                 explanation=r["response"]["explanation"], entry_point=r["entry_point"]) for i, r in enumerate(rows)]


def test_synthesis_makes_only_the_mutants_balancing_keeps():
    """The kept set is the one that making every mutant and then balancing gives, with fewer
    mutants made. Renaming only: a third of the examples have nothing to rename, so more must
    be asked for as results come back; then uneven categories, two mutants per example, a cap."""
    items = demo_items()
    uneven = [it for i, it in enumerate(items) if not (it[0].category in ("math", "lists") and i % 3 == 0)]
    rename = dict(synthetic_per_example=1, mutations=("rename",))
    for examples, base, balancing in (
            (items, rename, dict(balance="smallest", balance_floor=0)),
            (items, rename, dict(balance="none", category_cap=16)),
            (items, {**rename, "seed": 3}, dict(balance="smallest", balance_floor=0)),
            (uneven, dict(synthetic_per_example=2, seed=1), dict(balance="smallest", balance_floor=0, category_cap=15))):
        everything = curate_interactions(examples, config=CurationConfig(**base, balance="none"))
        wanted, _ = balance(everything.examples, mode=balancing["balance"], cap=balancing.get("category_cap"),
                            floor=balancing.get("balance_floor", 10), seed=base.get("seed", 0))
        cur = curate_interactions(examples, config=CurationConfig(**base, **balancing))
        assert sorted(e.ref for e in cur.examples) == sorted(e.ref for e in wanted)
        assert set(cur.examples) == set(wanted)  # the same examples, field for field
        assert cur.synthetic["skipped for balance"] >= 15 and everything.synthetic["added"] > cur.synthetic["added"]
        if base["synthetic_per_example"] == 1:  # every demo example is kept, then mutated or skipped
            made = cur.synthetic["added"] + sum(cur.synthetic["rejected"].values())
            assert made + cur.synthetic["skipped for balance"] == len(examples)


def test_synthesis_for_balance_is_the_same_in_worker_processes():
    items = demo_items() + [item(1000 + i, accepted=True, **func(f"k{i}_add", body=f"result = x + {i}\n    return result"))
                            for i in range(100)]  # enough examples for the process pool (most are near duplicates)
    config = dict(synthetic_per_example=1, balance="smallest", balance_floor=0)
    one = curate_interactions(items, config=CurationConfig(**config))
    two = curate_interactions(items, config=CurationConfig(**config, workers=2))
    assert one.examples == two.examples and one.drops == two.drops and one.synthetic == two.synthetic
    assert one.synthetic["skipped for balance"] > 0 and one.synthetic["added"] > 50


def test_parallel_workers_give_the_same_result():
    items = [item(i, accepted=True, **func(f"f{i}_add", body=f"return x + {i}")) for i in range(250)]
    items += [item(1000 + i, accepted=True, **func(f"f{i}_add", body=f"return x + {i}"))  # repeated requests
              for i in range(0, 250, 10)]
    items += [item(2000, accepted=True, **func("broken", body="return x +")),
              item(2001, accepted=True, **{**func("leaky"), "code": 'API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n'
                                                                   + func("leaky")["code"]})]
    one = curate_interactions(items, config=CurationConfig(balance="none"))
    two = curate_interactions(items, config=CurationConfig(balance="none", workers=2))
    assert one.examples == two.examples and len(one.examples) == 251
    assert one.drops == two.drops and one.stats()["dropped"] == {"duplicate": 25, "syntax error": 1}
    assert one.secrets == two.secrets and one.secrets["Stripe Access Key"] == 1
    assert [(s["stage"], s["in"], s["out"]) for s in one.stages] == [(s["stage"], s["in"], s["out"]) for s in two.stages]
    assert "<SECRET>" in next(e.code for e in two.examples if e.interaction_id == 2001)
    # with synthesis: mutants are made and prepared in the workers, in the same order
    config = dict(balance="none", synthetic_per_example=1)
    one = curate_interactions(items, config=CurationConfig(**config))
    two = curate_interactions(items, config=CurationConfig(**config, workers=2))
    assert one.examples == two.examples and one.drops == two.drops and one.synthetic == two.synthetic
    assert sum(e.source == "synthetic" for e in one.examples) == one.synthetic["added"] > 200


def test_workers_start_cleanly_beside_other_threads(monkeypatch):
    """A server or job worker runs other threads: curation's processes then come from a
    fork server, and the result is the same."""
    import multiprocessing
    import threading

    chosen = []
    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: chosen.append(method) or real(method))
    items = [item(i, accepted=True, **func(f"g{i}_add", body=f"return x + {i}")) for i in range(220)]
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        two = curate_interactions(items, config=CurationConfig(balance="none", workers=2))
    finally:
        stop.set()
    assert len(two.examples) == 220 and chosen == ["forkserver"]


def test_curation_pauses_the_garbage_collector_and_puts_it_back(monkeypatch):
    import gc

    from selftrain.data import pipeline

    states = []
    real = pipeline.mutants_of
    monkeypatch.setattr(pipeline, "mutants_of", lambda *a, **k: states.append(gc.isenabled()) or real(*a, **k))
    items = [item(i, accepted=True, **func(f"h{i}_add", body=f"result = x + {i}\n    return result")) for i in range(3)]
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            curate_interactions(items, config=CurationConfig(balance="none", synthetic_per_example=1))
            assert gc.isenabled() == enabled
    finally:
        gc.enable()
    assert states == [False] * 6
