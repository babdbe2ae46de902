from loadtest.verify import ClientLog, verify


def test_exact_run():
    logs = [ClientLog("a", 3, ((1, 1), (2, 3), (3, 4))), ClientLog("a", 1, ((1, 2),))]
    v = verify(logs, {"a": 4})
    assert v.exact and v.lost == 0 and v.c2s_lost == 0


def test_catches_a_loss():
    v = verify([ClientLog("a", 3, ((1, 1), (3, 2)))], {"a": 2})
    assert v.lost == 1 and v.c2s_lost == 1 and not v.exact


def test_catches_a_lost_reply():
    v = verify([ClientLog("a", 3, ((1, 1), (3, 3)))], {"a": 3})
    assert v.lost == 1 and v.c2s_lost == 0 and v.s2c_lost == 1


def test_catches_a_duplicate():
    v = verify([ClientLog("a", 2, ((1, 1), (1, 2), (2, 3)))], {"a": 3})
    assert v.duplicated >= 1 and not v.exact


def test_catches_a_reorder():
    v = verify([ClientLog("a", 2, ((2, 1), (1, 2)))], {"a": 2})
    assert v.reordered == 1 and not v.exact


def test_catches_state_rollback():
    # two replies claim the same counter value: the key's state went back in time
    v = verify([ClientLog("a", 1, ((1, 1),)), ClientLog("a", 1, ((1, 1),))], {"a": 1})
    assert v.duplicated >= 1
