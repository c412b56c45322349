"""The one check the fuzz suites share: a malformed call is refused by name, never with a bare NumPy message."""


def make_outcome(bare_numpy):
    """outcome(call, names): the call's result, or None after a ValueError/TypeError whose message names one
    of `names` and contains none of the `bare_numpy` fragments (NumPy's own wording leaking through)."""
    def outcome(call, names):
        try:
            return call()
        except (ValueError, TypeError) as e:
            message = str(e)
            assert any(name in message for name in names), f"message {message!r} names none of {names}"
            assert not any(bare in message for bare in bare_numpy), f"bare NumPy message: {message!r}"
            return None
    return outcome
