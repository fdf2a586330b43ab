"""collapse.errors: check_int, the one check that an argument is an integer in range; StorageError.transient."""
import numpy as np
import pytest

from collapse.errors import check_int


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), np.intc(3)])
def test_check_int_accepts_python_and_numpy_integers_and_returns_a_python_int(value):
    n = check_int(value, "k", low=1)
    assert n == 3 and type(n) is int


@pytest.mark.parametrize("value, given", [
    (True, "the bool True"), (False, "the bool False"), (np.bool_(True), ".*True_?"),
    (3.0, "float 3.0"), (np.float64(2.0), "float64 .*2.0.*"), ("3", "str '3'"), (None, "NoneType None"),
])
def test_check_int_refuses_bools_floats_and_strings(value, given):
    with pytest.raises(ValueError, match=f"^k must be an int >= 0, got {given}$"):
        check_int(value, "k")


def test_check_int_range_names_the_argument_and_the_bounds():
    assert check_int(0, "seed") == 0 and check_int(1, "pool_factor", low=1) == 1
    with pytest.raises(ValueError, match=r"^pool_factor must be an int >= 1, got 0$"):
        check_int(0, "pool_factor", low=1)
    with pytest.raises(ValueError, match=r"^seed must be an int >= 0, got -1$"):
        check_int(np.int32(-1), "seed")
    assert check_int(200, "n", low=1, high=200) == 200
    with pytest.raises(ValueError, match=r"^n must be an int in \[1, 200\], got 201$"):
        check_int(201, "n", low=1, high=200)


def test_the_callers_share_it():
    """The modules that once had their own integer checks raise check_int's message."""
    from collapse.paradigms import pool_size
    from collapse.seeding import sample_seed
    from collapse.selection import select
    with pytest.raises(ValueError, match="^pool_factor must be an int >= 1, got the bool True"):
        pool_size(10, True)
    with pytest.raises(ValueError, match="^generation must be an int >= 0, got float 1.0"):
        sample_seed(0, 1.0, 0)
    with pytest.raises(ValueError, match=r"^n must be an int in \[1, 4\], got 5"):
        select(np.zeros((4, 2)), 5, "random")


def test_storage_errors_say_whether_they_may_pass():
    import errno

    from collapse.data.storage import storage_call
    from collapse.errors import StorageError

    def raises(e):
        def fn():
            raise e
        return fn
    cases = {OSError(errno.EBUSY, "Please reduce your request rate."): True,
             OSError(errno.ENOSPC, "No space left on device"): False,
             PermissionError("denied"): False}
    for error, transient in cases.items():
        with pytest.raises(StorageError) as e:
            storage_call("s3://b/k", "cannot write", raises(error))
        assert e.value.transient is transient and str(e.value).startswith("cannot write 's3://b/k': ")
