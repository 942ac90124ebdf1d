import pytest
import torch

from mmllm.data.patterns import PATTERNS, CodebookPattern, get_pattern

FILL = -1


def _codes(k: int, f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1024, (k, f), generator=g, dtype=torch.int64)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("f", [0, 1, 17])
def test_round_trip(name: str, k: int, f: int) -> None:
    pattern = get_pattern(name)
    codes = _codes(k, f, seed=k * 100 + f)
    tokens = pattern.build(codes, fill=FILL)
    assert tokens.dtype == torch.int64
    assert tokens.shape[-1] == pattern.sequence_length(f, k)
    back = pattern.revert(tokens, num_codebooks=k)
    expected = codes[:1] if name == "first" else codes
    assert back.dtype == torch.int64
    assert back.shape == expected.shape
    assert torch.equal(back, expected)


@pytest.mark.parametrize("name", PATTERNS)
def test_build_does_not_alias_codes(name: str) -> None:
    codes = _codes(2, 5)
    original = codes.clone()
    tokens = get_pattern(name).build(codes, fill=FILL)
    tokens.fill_(7)
    assert torch.equal(codes, original)


def test_flatten_layout() -> None:
    codes = torch.tensor([[10, 11, 12], [20, 21, 22]])
    pattern = get_pattern("flatten")
    tokens = pattern.build(codes, fill=FILL)
    assert tokens.tolist() == [10, 20, 11, 21, 12, 22]
    assert pattern.sequence_length(3, 2) == 6
    assert pattern.num_streams(2) == 1


def test_delay_layout() -> None:
    codes = torch.tensor([[10, 11, 12], [20, 21, 22]])
    pattern = get_pattern("delay")
    assert pattern.build(codes, fill=-1).tolist() == [[10, 11, 12, -1], [-1, 20, 21, 22]]
    assert pattern.build(codes, fill=999).tolist() == [[10, 11, 12, 999], [999, 20, 21, 22]]
    assert pattern.sequence_length(3, 2) == 4
    assert pattern.num_streams(2) == 2


def test_delay_layout_three_codebooks() -> None:
    codes = torch.tensor([[1, 2], [3, 4], [5, 6]])
    tokens = get_pattern("delay").build(codes, fill=0)
    assert tokens.tolist() == [[1, 2, 0, 0], [0, 3, 4, 0], [0, 0, 5, 6]]
    assert get_pattern("delay").build(torch.zeros(3, 0, dtype=torch.int64), fill=9).tolist() == [
        [9, 9],
        [9, 9],
        [9, 9],
    ]


def test_first_layout() -> None:
    codes = torch.tensor([[10, 11, 12], [20, 21, 22]])
    pattern = get_pattern("first")
    tokens = pattern.build(codes, fill=FILL)
    assert tokens.tolist() == [10, 11, 12]
    assert pattern.revert(tokens, num_codebooks=2).tolist() == [[10, 11, 12]]
    assert pattern.sequence_length(3, 2) == 3


@pytest.mark.parametrize("name", PATTERNS)
def test_registry(name: str) -> None:
    pattern = get_pattern(name)
    assert isinstance(pattern, CodebookPattern)
    assert pattern.name == name


def test_unknown_pattern_names_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'interleave'.*flatten, delay, first"):
        get_pattern("interleave")


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("shape", [(6,), (2, 3, 4), (0, 3)])
def test_build_rejects_bad_shapes(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(.*\)"):
        get_pattern(name).build(torch.zeros(shape, dtype=torch.int64), fill=FILL)


@pytest.mark.parametrize("name", PATTERNS)
def test_build_rejects_float_codes(name: str) -> None:
    with pytest.raises(ValueError, match="dtype"):
        get_pattern(name).build(torch.zeros(2, 3), fill=FILL)


def test_flatten_revert_rejects_bad_shapes() -> None:
    pattern = get_pattern("flatten")
    with pytest.raises(ValueError, match=r"\(7,\).*2 codebooks"):
        pattern.revert(torch.zeros(7, dtype=torch.int64), num_codebooks=2)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        pattern.revert(torch.zeros(2, 3, dtype=torch.int64), num_codebooks=2)
    with pytest.raises(ValueError, match="num_codebooks"):
        pattern.revert(torch.zeros(4, dtype=torch.int64), num_codebooks=0)


def test_delay_revert_rejects_bad_shapes() -> None:
    pattern = get_pattern("delay")
    with pytest.raises(ValueError, match=r"K = 3.*\(2, 5\)"):
        pattern.revert(torch.zeros(2, 5, dtype=torch.int64), num_codebooks=3)
    with pytest.raises(ValueError, match=r"\(3, 1\)"):
        pattern.revert(torch.zeros(3, 1, dtype=torch.int64), num_codebooks=3)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        pattern.revert(torch.zeros(6, dtype=torch.int64), num_codebooks=2)


def test_first_revert_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        get_pattern("first").revert(torch.zeros(1, 3, dtype=torch.int64), num_codebooks=1)


@pytest.mark.parametrize("name", PATTERNS)
def test_sequence_length_rejects_bad_counts(name: str) -> None:
    pattern = get_pattern(name)
    with pytest.raises(ValueError, match="num_codebooks"):
        pattern.sequence_length(3, 0)
    with pytest.raises(ValueError, match="num_frames"):
        pattern.sequence_length(-1, 2)
