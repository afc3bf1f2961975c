"""supervise.curve key files: generation, modes, loading, and every way a key can be wrong."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from supervise.wire import curve
from supervise.wire.curve import CurveError, KeyPair


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return curve.keygen(tmp_path / "keys", "daemon")


# -- keygen ---------------------------------------------------------------------------


def test_keygen_writes_a_public_and_a_private_file(pair, tmp_path):
    public, secret = pair
    assert (public, secret) == (tmp_path / "keys" / "daemon.key", tmp_path / "keys" / "daemon.key_secret")
    assert mode(secret) == 0o600
    assert not mode(public) & 0o022  # world-readable is fine for a public key; writable is not
    assert mode(tmp_path / "keys") == 0o700
    assert "secret-key" not in public.read_text()


def test_keygen_secret_mode_ignores_the_umask(tmp_path):
    old = os.umask(0)
    try:
        _, secret = curve.keygen(tmp_path, "loose")
    finally:
        os.umask(old)
    assert mode(secret) == 0o600


def test_keygen_files_load_back_as_one_key_pair(pair):
    public, secret = pair
    keys = curve.load_secret(secret)
    assert curve.load_public(public) == keys.public
    assert curve.load_public(secret) == keys.public
    assert zmq.curve_public(keys.secret.encode()).decode() == keys.public


def test_keygen_files_are_pyzmq_certificates(pair):
    public, secret = pair
    keys = curve.load_secret(secret)
    assert zmq.auth.load_certificate(public) == (keys.public.encode(), None)
    assert zmq.auth.load_certificate(secret) == (keys.public.encode(), keys.secret.encode())


def test_pyzmq_certificates_load(tmp_path):
    public, secret = (Path(p) for p in zmq.auth.create_certificates(str(tmp_path), "made_by_pyzmq"))
    secret.chmod(0o600)
    keys = curve.load_secret(secret)
    assert curve.load_public(public) == keys.public


@pytest.mark.parametrize("existing", ["daemon.key", "daemon.key_secret"])
def test_keygen_refuses_to_overwrite(tmp_path, existing):
    (tmp_path / existing).write_text("precious\n")
    with pytest.raises(CurveError, match=r"already exists?: refusing to overwrite") as err:
        curve.keygen(tmp_path, "daemon")
    assert existing in str(err.value)
    assert (tmp_path / existing).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing half-written beside it


def test_keygen_twice_keeps_the_first_pair(pair, tmp_path):
    public, secret = pair
    before = public.read_text(), secret.read_text()
    with pytest.raises(CurveError, match="refusing to overwrite"):
        curve.keygen(tmp_path / "keys", "daemon")
    assert (public.read_text(), secret.read_text()) == before


def test_keygen_does_not_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "daemon.key_secret").symlink_to(target)
    with pytest.raises(CurveError, match="refusing to overwrite"):
        curve.keygen(tmp_path, "daemon")
    assert not target.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up"])
def test_keygen_wants_a_plain_name(tmp_path, name):
    with pytest.raises(CurveError, match="plain file name"):
        curve.keygen(tmp_path, name)


def test_generate_gives_a_matching_pair_whose_repr_hides_the_secret():
    keys = curve.generate()
    assert len(keys.public) == len(keys.secret) == 40
    assert zmq.curve_public(keys.secret.encode()).decode() == keys.public
    assert keys.secret not in repr(keys) and keys.secret not in str(keys)
    assert keys.public in repr(keys)
    assert curve.generate() != keys


# -- load_secret ---------------------------------------------------------------------------


def write_secret(path: Path, text: str, file_mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(file_mode)
    return path


def curve_file(public: str | None = None, secret: str | None = None) -> str:
    lines = ["metadata", "curve"]
    if public is not None:
        lines.append(f'    public-key = "{public}"')
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("file_mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o620])
def test_load_secret_refuses_a_file_others_can_access(pair, file_mode):
    _, secret = pair
    secret.chmod(file_mode)
    with pytest.raises(CurveError) as err:
        curve.load_secret(secret)
    message = str(err.value)
    assert f"chmod 600 {secret}" in message
    assert f"{file_mode:04o}" in message
    assert str(secret) in message


@pytest.mark.parametrize("file_mode", [0o600, 0o400])
def test_load_secret_accepts_an_owner_only_file(pair, file_mode):
    _, secret = pair
    secret.chmod(file_mode)
    assert isinstance(curve.load_secret(secret), KeyPair)


def test_load_secret_of_a_missing_file(tmp_path):
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(CurveError, match=r"nope\.key_secret: no such secret key file .*supervise keygen"):
        curve.load_secret(missing)


def test_load_secret_of_a_directory(tmp_path):
    with pytest.raises(CurveError, match="is a directory"):
        curve.load_secret(tmp_path)


def test_load_secret_of_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "trap.key_secret"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CurveError, match="not a regular file"):
        curve.load_secret(fifo)


def test_load_secret_of_an_unreadable_file(pair, monkeypatch):
    _, secret = pair
    secret.chmod(0o000)
    if os.geteuid() == 0:  # root reads any file: make the open fail the way it would for anyone else
        real_open = os.open

        def denying_open(path, *args, **kwargs):
            if Path(path) == secret:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(CurveError, match=r"daemon\.key_secret: cannot read the secret key file: permission denied"):
        curve.load_secret(secret)


def test_load_secret_given_the_public_file_points_at_the_secret_one(pair):
    public, _ = pair
    public.chmod(0o600)
    with pytest.raises(CurveError, match=r"daemon\.key: holds only a public key.*\.key_secret"):
        curve.load_secret(public)


def test_load_secret_given_a_public_key_string_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CurveError, match="no such secret key file"):
        curve.load_secret(curve.generate().public)


@pytest.mark.parametrize("text, problem", [
    ("hello world\n", "no secret-key line"),
    ("", "no secret-key line"),
    ("\x00\xff garbage", "not ASCII text"),
    (curve_file(secret="tooShort"), "40-character Z85 key (it has 8 characters)"),
    (curve_file(secret="x" * 41), "it has 41 characters"),
    (curve_file(secret="~" * 40), "outside the Z85 alphabet"),
    (curve_file(secret="#" * 40), "more than 32 bits"),
])
def test_load_secret_of_a_bad_file(tmp_path, text, problem):
    path = tmp_path / "bad.key_secret"
    path.write_bytes(text.encode("latin-1"))
    path.chmod(0o600)
    with pytest.raises(CurveError) as err:
        curve.load_secret(path)
    assert problem in str(err.value)
    assert str(err.value).startswith(f"{path}")


def test_load_secret_never_quotes_the_secret(tmp_path):
    keys = curve.generate()
    leaky = write_secret(tmp_path / "leak.key_secret", curve_file(secret=keys.secret[:39]))
    with pytest.raises(CurveError) as err:
        curve.load_secret(leaky)
    assert keys.secret[:39] not in str(err.value)
    assert keys.secret[:8] not in str(err.value)


def test_load_secret_with_a_public_key_of_another_pair(tmp_path):
    mine, other = curve.generate(), curve.generate()
    path = write_secret(tmp_path / "mixed.key_secret", curve_file(other.public, mine.secret))
    with pytest.raises(CurveError, match="does not belong to secret-key"):
        curve.load_secret(path)


def test_load_secret_without_a_public_line_derives_it(tmp_path):
    keys = curve.generate()
    path = write_secret(tmp_path / "bare.key_secret", curve_file(secret=keys.secret))
    assert curve.load_secret(path) == keys


def test_load_secret_with_a_duplicate_line(tmp_path):
    keys = curve.generate()
    path = write_secret(tmp_path / "twice.key_secret",
                        curve_file(keys.public, keys.secret) + f'    secret-key = "{keys.secret}"\n')
    with pytest.raises(CurveError, match=r"twice\.key_secret:5: secret-key appears twice"):
        curve.load_secret(path)


def test_load_secret_of_a_huge_file(tmp_path):
    path = write_secret(tmp_path / "huge.key_secret", "#" * (curve.MAX_KEY_FILE + 1))
    with pytest.raises(CurveError, match="larger than"):
        curve.load_secret(path)


# -- load_public ---------------------------------------------------------------------------


def test_load_public_of_a_key_string():
    key = curve.generate().public
    assert curve.load_public(key) == key


def test_load_public_of_a_path_or_str_path(pair):
    public, _ = pair
    expected = curve.load_secret(pair[1]).public
    assert curve.load_public(public) == expected
    assert curve.load_public(str(public)) == expected


def test_load_public_of_a_file_named_like_a_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    public, _ = curve.keygen(tmp_path, "x" * 36)  # "xxx...x.key": 40 characters, still a file
    assert len(public.name) == 40
    assert curve.load_public(public.name) == curve.load_public(public)


@pytest.mark.parametrize("value, problem", [
    ("~" * 40, "outside the Z85 alphabet"),
    ("#" * 40, "more than 32 bits"),
])
def test_load_public_of_a_bad_key_string(value, problem):
    with pytest.raises(CurveError, match=problem) as err:
        curve.load_public(value)
    assert value not in str(err.value)  # masked: it might be a secret pasted in the wrong place


@pytest.mark.parametrize("value", ["short", "x" * 39, "x" * 41])
def test_load_public_of_a_wrong_length_string_is_taken_as_a_missing_file(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CurveError, match="no such public key file"):
        curve.load_public(value)


def test_load_public_of_a_file_without_a_key(tmp_path):
    path = tmp_path / "notes.key"
    path.write_text("just some notes\n")
    with pytest.raises(CurveError, match=r"notes\.key: not a CURVE key file \(no public-key line\)"):
        curve.load_public(path)


def test_load_public_of_a_file_with_a_bad_key(tmp_path):
    path = tmp_path / "bad.key"
    path.write_text(curve_file(public="abc"))
    with pytest.raises(CurveError, match=r"bad\.key: public-key is not a 40-character"):
        curve.load_public(path)


def test_load_public_of_a_missing_file(tmp_path):
    with pytest.raises(CurveError, match=r"gone\.key: no such public key file"):
        curve.load_public(tmp_path / "gone.key")


# -- mask ----------------------------------------------------------------------------------


def test_mask_keeps_eight_characters():
    key = curve.generate().public
    assert curve.mask(key) == key[:8] + "…"
    assert key not in curve.mask(key)


def test_mask_of_a_short_string():
    assert curve.mask("abc") == "abc…"
