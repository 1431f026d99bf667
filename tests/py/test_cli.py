"""The admin CLI: addresses, aliases, devices; address rules; exit statuses."""

import json

import pytest

from support import AUTH_FAILED, last_line


@pytest.fixture
def pt(make_postern):
    """A configured server that is not running: the CLI works on its store alone."""
    return make_postern()


def json_strings(value) -> set[str]:
    """Every string anywhere in a JSON document (the list layout is not specified)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(json_strings(v) for v in value.values()), set(value)) \
            if value else set()
    if isinstance(value, list):
        return set().union(*(json_strings(v) for v in value)) if value else set()
    return set()


def listed(pt, *args) -> set[str]:
    """Strings of `... list [ARGS] --json` (parsed as JSON)."""
    return json_strings(json.loads(pt.cli(*args, "--json").stdout))


def state(pt) -> tuple[str, str]:
    """A snapshot of what the CLI can see, to show that a refused command changed nothing."""
    return pt.cli("address", "list", "--json").stdout, pt.cli("address", "list").stdout


def test_address_add_list_remove(pt):
    """`address add` (with and without --plan), `address list` (text and --json), `address
    remove`."""
    pt.add_address("alice@example.org")
    pt.add_address("bob@example.net", plan="business")
    text = pt.cli("address", "list").stdout
    assert "alice@example.org" in text and "bob@example.net" in text
    assert {"alice@example.org", "bob@example.net", "business"} <= listed(pt, "address", "list")
    pt.cli("address", "remove", "alice@example.org")
    found = listed(pt, "address", "list")
    assert "alice@example.org" not in found and "bob@example.net" in found


@pytest.mark.parametrize("address", [
    "a@example.org", "first.last@example.org", "a-b_c.d9@example.org", "A.Z09@example.org",
    "x" * 64 + "@example.org", "a_@example.org", "_a@example.org"])
def test_valid_addresses_accepted(pt, address):
    """Letters, digits, `-`, `_`, `.` in allowed places, up to 64 characters: accepted."""
    pt.add_address(address)
    assert address.lower() in {s.lower() for s in listed(pt, "address", "list")}


@pytest.mark.parametrize("address,char,position", [
    ("a!b@example.org", "!", 2),
    ("-ab@example.org", "-", 1),
    ("ab-@example.org", "-", 3),
    (".ab@example.org", ".", 1),
    ("ab.@example.org", ".", 3),
    ("a..b@example.org", ".", 3),
    ("a b@example.org", " ", 2),
    ("ab#c@example.org", "#", 3),
    ("a+b@example.org", "+", 2),
    ("a/b@example.org", "/", 2),
    ("a\"b@example.org", "\"", 2),
    ("aé@example.org", "é", 2),
])
def test_invalid_address_names_character_and_position(pt, address, char, position):
    """A refused address names the offending character and its 1-based position; nothing is
    stored."""
    before = state(pt)
    r = pt.cli("address", "add", "--", address, check=False)     # `--`: "-ab@..." is no option
    assert r.returncode != 0
    message = r.stderr + r.stdout
    assert f"'{char}'" in message and f"position {position}" in message, message
    assert state(pt) == before


def test_local_part_of_65_characters_refused(pt):
    """64 characters is the limit: 65 is refused and nothing is stored."""
    before = state(pt)
    r = pt.cli("address", "add", "x" * 65 + "@example.org", check=False)
    assert r.returncode != 0 and (r.stderr.strip() or r.stdout.strip())
    assert state(pt) == before


@pytest.mark.parametrize("address", ["@example.org", "no-at-sign", "a@", ""])
def test_malformed_addresses_refused(pt, address):
    """Empty local part, missing @ or domain: refused, nothing stored."""
    before = state(pt)
    assert pt.cli("address", "add", "--", address, check=False).returncode != 0
    assert state(pt) == before


def test_invalid_alias_refused(pt):
    """Aliases follow the same rules: `a!b@...` names '!' at position 2."""
    pt.add_address("alice@example.org")
    r = pt.cli("alias", "add", "a!b@example.org", "alice@example.org", check=False)
    assert r.returncode != 0
    assert "'!'" in r.stderr + r.stdout and "position 2" in r.stderr + r.stdout


@pytest.mark.parametrize("args", [
    ["address", "add", "alice@example.org"],                     # duplicate
    ["device", "add", "nobody@example.org", "--name", "laptop"],   # unknown address
    ["device", "revoke", "alice@example.org", "no-such-device"],
    ["device", "rotate", "alice@example.org", "no-such-device"],
    ["alias", "add", "info@example.org", "nobody@example.org"],    # alias of unknown address
    ["address", "remove", "nobody@example.org"],
])
def test_store_errors_exit_1_with_one_line(pt, args):
    """Store errors (duplicates, unknown address or device) exit 1 with exactly one line on
    stderr, and change nothing."""
    pt.add_address("alice@example.org")
    before = state(pt)
    r = pt.cli(*args, check=False)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert state(pt) == before


@pytest.mark.parametrize("args", [
    ["address"], ["address", "add"], ["frobnicate"],
    ["device", "add", "alice@example.org"],                       # --name missing
    ["device", "rotate", "alice@example.org"],                    # NAME missing
    ["address", "add", "bob@example.org", "--bogus"],
    ["alias", "add", "info@example.org"],
    ["address", "add", "bob@example.org", "--plan", "no-such-plan"],
])
def test_bad_usage_exits_2_and_changes_nothing(pt, args):
    """Bad usage exits 2 and changes nothing."""
    pt.add_address("alice@example.org")
    pt.add_device("alice@example.org", "laptop")
    before = state(pt), pt.cli("device", "list", "alice@example.org", "--json").stdout
    r = pt.cli(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert (state(pt), pt.cli("device", "list", "alice@example.org", "--json").stdout) == before


def test_device_add_list_never_shows_password(pt):
    """`device add` prints the password alone on the last line; `device list` (text and --json)
    shows the device names but never a password."""
    pt.add_address("alice@example.org")
    r = pt.cli("device", "add", "alice@example.org", "--name", "laptop")
    password = last_line(r.stdout)
    assert password and password == password.strip() and len(password.split()) == 1
    phone = pt.add_device("alice@example.org", "phone")
    text = pt.cli("device", "list", "alice@example.org").stdout
    assert "laptop" in text and "phone" in text
    found = listed(pt, "device", "list", "alice@example.org")
    assert {"laptop", "phone"} <= found
    for pw in (password, phone):
        assert pw not in text and not any(pw in s for s in found)


def test_device_revoke_and_revoke_all(pt):
    """`device revoke` removes one device, `device revoke-all` all devices of the address only."""
    pt.add_address("alice@example.org")
    pt.add_address("bob@example.net")
    for name in ("laptop", "phone", "tablet"):
        pt.add_device("alice@example.org", name)
    pt.add_device("bob@example.net", "desktop")
    pt.cli("device", "revoke", "alice@example.org", "phone")
    assert {"laptop", "tablet"} <= listed(pt, "device", "list", "alice@example.org")
    assert "phone" not in listed(pt, "device", "list", "alice@example.org")
    pt.cli("device", "revoke-all", "alice@example.org")
    assert not {"laptop", "tablet"} & listed(pt, "device", "list", "alice@example.org")
    assert "desktop" in listed(pt, "device", "list", "bob@example.net")


def test_config_option_after_subcommand_and_env(pt):
    """`--config` is accepted after the subcommand too, and POSTERN_CONFIG selects the file."""
    pt.cli("address", "add", "alice@example.org", "--config", str(pt.config_path),
           with_config=False)
    r = pt.cli("address", "list", with_config=False, env={"POSTERN_CONFIG": str(pt.config_path)})
    assert r.returncode == 0 and "alice@example.org" in r.stdout


def test_address_remove_while_running_disables_login(server):
    """`address remove` while the server runs: the address's passwords stop working."""
    alice = server.alice
    server.cli("address", "remove", alice.address)
    client = server.connect("submissions")
    client.ehlo()
    assert client.auth_plain(alice.address, alice.password) == AUTH_FAILED
