"""parse_listen_address: the one reader of the `listen` syntax, for the config check and the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervise.config.units import Invalid, TcpAddress, UnixAddress, listen_address, parse_listen_address


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:8080", TcpAddress("127.0.0.1", 8080)),
    ("0.0.0.0:0", TcpAddress("0.0.0.0", 0)),
    ("localhost:65535", TcpAddress("localhost", 65535)),
    ("[::1]:8080", TcpAddress("::1", 8080)),
    ("[::]:80", TcpAddress("::", 80)),
    ("unix:/run/app.sock", UnixAddress("/run/app.sock")),
    ("unix:relative.sock", UnixAddress("relative.sock")),
    ("unix:@name", UnixAddress("@name")),
    ("unix:@with\0nul", UnixAddress("@with\0nul")),
])
def test_parses(text: str, parsed: object) -> None:
    assert parse_listen_address(text) == parsed


@pytest.mark.parametrize(("text", "message"), [
    ("8080", "expected an address"),
    (":8080", "expected an address"),
    ("host:", "expected an address"),
    ("host:http", "expected an address"),
    ("host:８０", "expected an address"),  # digits, but not ASCII ones
    ("host:65536", "expected a port from 0 to 65535"),
    ("host:" + "9" * 5000, "expected a port from 0 to 65535"),
    ("::1:8080", "expected an IPv4 address, [IPv6] address or host name"),
    ("[::1:8080", "expected an IPv4 address, [IPv6] address or host name"),
    ("[nope]:8080", "expected an IPv4 address, [IPv6] address or host name"),
    ("300.1.1.1:80", "expected an IPv4 address, [IPv6] address or host name"),
    ("-bad-:80", "expected an IPv4 address, [IPv6] address or host name"),
    ("unix:", 'expected a socket path after "unix:"'),
    ("unix:/a\0b", "a socket path cannot contain a NUL character"),
])
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(Invalid, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_listen_address(text)


def test_abstract_names_bind_as_the_nul_they_stand_for() -> None:
    abstract, path = UnixAddress("@name"), UnixAddress("/run/x.sock")
    assert abstract.abstract and abstract.sockaddr == "\0name"
    assert not path.abstract and path.sockaddr == "/run/x.sock"


def test_the_config_check_uses_the_parser_and_makes_unix_paths_absolute(tmp_path: Path) -> None:
    assert listen_address(tmp_path, "unix:sub/app.sock") == f"unix:{tmp_path / 'sub' / 'app.sock'}"
    assert listen_address(tmp_path, "unix:@name") == "unix:@name"
    assert listen_address(tmp_path, "[::1]:80") == "[::1]:80"  # kept as written: it names the socket
    with pytest.raises(Invalid, match="expected a port"):
        listen_address(tmp_path, "host:99999")
    with pytest.raises(Invalid, match="expected an address"):
        listen_address(tmp_path, 8080)


def test_listen_defaults_are_systemds() -> None:
    from supervise.runtime.listeners import DEFAULT, UNIX_MODE

    assert (DEFAULT.nodelay, DEFAULT.backlog, DEFAULT.reuseport) == (True, 1024, False)
    assert DEFAULT.mode is None and UNIX_MODE == 0o666  # SocketMode=0666
    assert DEFAULT.owner is None and DEFAULT.group is None  # the daemon's


def test_a_socket_owner_is_a_name_or_a_number_and_brings_its_group() -> None:
    import pwd

    from supervise.config.model import ListenOptions
    from supervise.runtime.listeners import ListenError, _owner

    root = pwd.getpwuid(0)
    assert _owner("x", ListenOptions()) == (-1, -1)  # left as bind() made it
    assert _owner("x", ListenOptions(owner=root.pw_name)) == (0, root.pw_gid)  # systemd: the user's group
    assert _owner("x", ListenOptions(owner="0", group="12345")) == (0, 12345)
    assert _owner("x", ListenOptions(group="4242")) == (-1, 4242)
    with pytest.raises(ListenError, match=r"^cannot listen on x: owner '-1': no such user$"):
        _owner("x", ListenOptions(owner="-1"))
    with pytest.raises(ListenError, match=r"^cannot listen on x: group 'nope nope': no such group$"):
        _owner("x", ListenOptions(group="nope nope"))
