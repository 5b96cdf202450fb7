"""Random histories of writes and partial exchanges between replicas.

Whatever happened, merging replica states must be commutative, associative and idempotent,
a delta must reach the state a full copy reaches, and the store's invariant must hold:
clock[o] >= q implies the state holds write (o, q) or a record that wins over it.
"""

from contextlib import ExitStack

from hypothesis import given, settings
from hypothesis import strategies as st

import replicad.store
from replicad.store import NewerEpoch, Store
from replicad.vclock import VectorClock

REPLICAS = (1, 2, 3)
KEYS = ("a", "b", "c", "d")

replica = st.sampled_from(REPLICAS)
op = st.one_of(
    st.tuples(
        st.just("write"),
        replica,
        st.sampled_from(KEYS),
        st.one_of(st.none(), st.text("xyz", max_size=2)),
    ),
    st.tuples(st.just("pull"), replica, replica, st.sampled_from(["delta", "full", "import"])),
    # an import merged one key per step, and the receiver writes a key between two steps
    st.tuples(st.just("stepped"), replica, replica, st.sampled_from(KEYS),
              st.one_of(st.none(), st.text("xyz", max_size=2))),
    # push one of origin's writes to a replica: in order, a duplicate, or after a gap
    st.tuples(st.just("push"), replica, replica, st.integers(0, 5)),
    # replica becomes coordinator of a newer epoch; the others keep theirs (a split
    # brain): their writes over its records are refused (NewerEpoch), never merged wrong
    st.tuples(st.just("elect"), replica),
)
histories = st.lists(op, max_size=25)
SETTINGS = settings(max_examples=100, deadline=None)


def dump(store):
    clock, records = store.export_full()
    return clock, list(records)


def pull(dst, src, mode):
    """dst catches up with src the way the replicas do."""
    if mode == "full":
        return dst.apply(*reversed(src.export_full()))
    clock, records = src.export_delta(dst.clock)
    if mode == "delta":
        return dst.apply(records, clock)
    importer = dst.begin_import()
    for record in records:
        importer.add(record)
    return importer.finish(clock)


def stepped_pull(dst, src, between):
    """dst imports a delta from src one key per step (Importer.finish_steps), calling
    between() after the first step: records already merged sit beyond the clock."""
    clock, records = src.export_delta(dst.clock)
    importer = dst.begin_import()
    for record in records:
        importer.add(record)
    merge_rows, replicad.store.MERGE_ROWS = replicad.store.MERGE_ROWS, 1
    try:
        steps = importer.finish_steps(clock)
        for n, _ in enumerate(steps):
            if n == 0:
                between()
    finally:
        replicad.store.MERGE_ROWS = merge_rows


def check_invariant(store, writes):
    assert store.count() == store._count_live()      # the count kept as rows change
    for w in writes:
        if store.clock[w.origin] >= w.seq:
            held = store.get(w.key)
            assert held is not None and held.rank() >= w.rank(), (w, held)


def run(history, stack):
    """Play history on fresh replicas; return them and every write made."""
    stores = {i: stack.enter_context(Store(":memory:")) for i in REPLICAS}
    epochs = dict.fromkeys(REPLICAS, 0)
    writes = []
    for kind, i, *args in history:
        if kind == "elect":
            epochs[i] = max(epochs.values()) + 1
        elif kind == "write":
            key, value = args
            try:
                writes.append(stores[i].write(i, key, value, epochs[i]))
            except NewerEpoch:
                pass     # a deposed coordinator: it steps down instead
        elif kind == "pull":
            j, mode = args
            pull(stores[i], stores[j], mode)
        elif kind == "stepped":
            j, key, value = args

            def between(i=i, key=key, value=value):
                check_invariant(stores[i], writes)
                try:
                    writes.append(stores[i].write(i, key, value, epochs[i]))
                except NewerEpoch:
                    pass

            stepped_pull(stores[i], stores[j], between)
        else:
            j, back = args
            mine = [w for w in writes if w.origin == i]
            if mine:
                stores[j].apply_pushed(mine[max(0, len(mine) - 1 - back)])
        for store in stores.values():
            check_invariant(store, writes)
    return stores, writes


def merged(stack, *sources):
    """A fresh store that pulled the full state of each source, in this order."""
    store = stack.enter_context(Store(":memory:"))
    for source in sources:
        pull(store, source, "full")
    return store


def expected_state(writes):
    """All writes merged: per key the greatest rank, the clock counts each origin's writes."""
    best = {}
    for w in writes:
        if w.key not in best or w.rank() > best[w.key].rank():
            best[w.key] = w
    clock = VectorClock({}).merge({w.origin: w.seq for w in writes})
    return clock, [best[k] for k in sorted(best)]


@SETTINGS
@given(histories, st.permutations(REPLICAS), st.permutations(REPLICAS))
def test_merge_order_does_not_matter(history, order1, order2):
    with ExitStack() as stack:
        stores, writes = run(history, stack)
        one = merged(stack, *(stores[i] for i in order1))
        two = merged(stack, *(stores[i] for i in order2))
        assert dump(one) == dump(two) == expected_state(writes)


@SETTINGS
@given(histories)
def test_merge_associative(history):
    with ExitStack() as stack:
        stores, _ = run(history, stack)
        a, b, c = (stores[i] for i in REPLICAS)
        left = merged(stack, merged(stack, a, b), c)
        right = merged(stack, a, merged(stack, b, c))
        assert dump(left) == dump(right)


@SETTINGS
@given(histories, replica)
def test_merge_idempotent(history, i):
    with ExitStack() as stack:
        stores, _ = run(history, stack)
        once = merged(stack, stores[i])
        assert dump(merged(stack, stores[i], stores[i])) == dump(once)
        before = dump(once)
        assert pull(once, once, "full").applied == 0
        assert pull(once, stores[i], "full").applied == 0
        assert dump(once) == before


@SETTINGS
@given(histories, replica, replica)
def test_delta_reaches_the_same_state_as_full_copy(history, i, j):
    with ExitStack() as stack:
        stores, writes = run(history, stack)
        results = []
        for mode in ("full", "delta", "import"):
            receiver = merged(stack, stores[i])  # a copy of replica i, clock included
            pull(receiver, stores[j], mode)
            check_invariant(receiver, writes)
            results.append(dump(receiver))
        assert results[0] == results[1] == results[2]
        assert results[0][0] == stores[i].clock.merge(stores[j].clock)


@SETTINGS
@given(histories)
def test_rank_extends_happened_before(history):
    """A write that saw another (its version dominates) always ranks above it, epochs
    included: what makes epoch-first ranking safe (Store.write refuses to write over a
    record of a newer epoch, so epochs never fall along happened-before)."""
    with ExitStack() as stack:
        _, writes = run(history, stack)
        for a in writes:
            for b in writes:
                if a.key == b.key and a.version < b.version:
                    assert a.rank() < b.rank(), (a, b)
