"""Recurrence: state attributes assigned in forward (filled in by the recurrence work)."""


def state_factory(cls, inst):
    return None


def _todo(*a, **k):
    raise NotImplementedError("recurrence is not implemented yet")


unroll = unroll1 = flip = reset = RNN = GRU = LSTM = _todo


def snapshot_states(m):
    """The recurrent state of every model in the tree of ``m``, to restore later."""
    from .params import submodels, is_model
    if not is_model(m):
        return []
    return [(x, dict(x.__dict__["_fc_state"]) if "_fc_state" in x.__dict__ else None) for x in submodels(m)]


def restore_states(snapshot):
    for x, st in snapshot:
        if st is None:
            x.__dict__.pop("_fc_state", None)
        else:
            x.__dict__["_fc_state"] = dict(st)
