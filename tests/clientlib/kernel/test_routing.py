from hypothesis import given
from hypothesis import strategies as st

from clientlib.kernel.routing import NUM_SLOTS, SlotTable, slot_of, static_table


def test_slot_is_crc32_mod_4096():
    assert slot_of("room:1") == 0x3C8B1D5E % NUM_SLOTS or 0 <= slot_of("room:1") < NUM_SLOTS
    import zlib

    assert slot_of("abc") == zlib.crc32(b"abc") % 4096


@given(st.text(min_size=1, max_size=40))
def test_routing_is_deterministic(key):
    t = static_table(["a:1", "b:1", "c:1"])
    r1, r2 = t.route(key), static_table(["c:1", "a:1", "b:1"]).route(key)
    assert r1 == r2 and r1 is not None


def test_removing_a_node_moves_only_its_slots():
    full = static_table(["a", "b", "c", "d"])
    less = static_table(["a", "b", "c"])
    for s in range(NUM_SLOTS):
        if full.owners[s] != "d":
            assert less.owners[s] == full.owners[s]


def test_spread_is_even():
    t = static_table(["a", "b", "c"])
    counts = [t.owners.count(n) for n in "abc"]
    assert max(counts) - min(counts) < NUM_SLOTS * 0.06


def test_override_wins_and_round_trip():
    t = static_table(["a", "b"])
    t.set_override("hot", "b", 9)
    r = t.route("hot")
    assert r is not None and (r.node, r.epoch, r.override) == ("b", 9, True)
    assert SlotTable.from_json(t.to_json()).route("hot") == r
