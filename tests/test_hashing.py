import hashlib

from agnews.hashing import sha256


def test_parts_hash_as_one_stream_and_a_path_as_its_bytes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 9000)  # over one 1 MiB read block
    expected = hashlib.sha256(b"name\0" + "ünïcode".encode() + path.read_bytes()).hexdigest()
    assert sha256(b"name\0", "ünïcode", path) == expected
    assert sha256() == hashlib.sha256().hexdigest()
    assert sha256("ab", "c") == sha256("a", "bc") != sha256("abd")
