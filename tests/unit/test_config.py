"""The config loader: strict schema, line-precise errors, config discovery, overrides file."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import msgspec
import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

import lmtui.config.overrides
import lmtui.config.paths
from lmtui.config import (
    Config,
    ConfigError,
    ModelConfig,
    NodeConfig,
    Overrides,
    PeerConfig,
    PollConfig,
    PoolConfig,
    PoolNodeConfig,
    RouterConfig,
    SshConfig,
    WebConfig,
    key_strings,
    load_config,
    parse_listen,
)
from lmtui.config.locate import key_lines
from lmtui.config.overrides import corrupt_path, load_overrides, save_overrides
from lmtui.core.model import NodeKind

REPO = Path(__file__).resolve().parents[2]

NODE_A = """
[[nodes]]
name = "a"
kind = "ollama"
url = "http://a.local:11434"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


_POOL_OK = """
[[nodes]]
name = "p"
kind = "llamacpp-pool"
url = "http://127.0.0.1:8080"
[nodes.pool]
binary = "x"
"""

# --- errors: each kind names the right line, key and problem ------------------------------

ERROR_CASES = [
    pytest.param(
        'foo = 1\n[router]\nlisten = "127.0.0.1:4000"\n',
        1,
        "foo",
        "unknown key 'foo' at the top level",
        id="unknown-top-level",
    ),
    pytest.param(
        '[router]\nlisten = "127.0.0.1:4000"\nstratgy = "spread"\n',
        3,
        "router.stratgy",
        "did you mean 'strategy'?",
        id="unknown-in-router",
    ),
    pytest.param(
        NODE_A + '\n[[nodes]]\nname = "b"\nkind = "ollama"\nurl = "http://b"\nslot = 2\n',
        10,
        "nodes[1].slot",
        "valid keys: name, kind, url",
        id="unknown-in-second-node",
    ),
    pytest.param(
        NODE_A + '\n[[nodes]]\nname = "b"\nkind = "ollama"\nurl = "http://b"\n\n'
        "[nodes.ssh]\nport = 22\nusr = 'me'\n",
        13,
        "nodes[1].ssh.usr",
        "unknown key 'usr' in [nodes.ssh]; did you mean 'user'?",
        id="unknown-in-ssh-of-second-node",
    ),
    pytest.param(
        NODE_A + "ssh = { port = 22, hots = 'x' }\n",
        5,
        "nodes[0].ssh.hots",
        "did you mean 'host'?",
        id="unknown-in-inline-table",
    ),
    pytest.param(
        "[poll]\ninterval = 1\ndown_after = 'two'\n",
        3,
        "poll.down_after",
        "expected an integer, got 'two'",
        id="wrong-type",
    ),
    pytest.param(
        "[router]\nqueue_depth = '10'\n",
        2,
        "router.queue_depth",
        "(remove the quotes)",
        id="number-in-quotes",
    ),
    pytest.param(
        "[router]\nsession_affinity = 1\n",
        2,
        "router.session_affinity",
        "expected true or false, got 1",
        id="int-for-bool",
    ),
    pytest.param(
        NODE_A + "\n[nodes.ssh]\nport = 70000\n",
        7,
        "nodes[0].ssh.port",
        "must be <= 65535, got 70000",
        id="out-of-range-high",
    ),
    pytest.param(
        "[pool]\nreserved_gb = -1\n",
        2,
        "pool.reserved_gb",
        "must be >= 0, got -1",
        id="out-of-range-negative",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "olama"\nurl = "http://a"\n',
        3,
        "nodes[0].kind",
        "'olama' is not allowed here; did you mean 'ollama'?",
        id="bad-enum",
    ),
    pytest.param(
        "[router]\nstrategy = 'fastest'\n",
        2,
        "router.strategy",
        "choose one of: efficiency, replicas, spread",
        id="bad-literal",
    ),
    pytest.param(
        '# two nodes\n\n[[nodes]]\nname = "a"\nurl = "http://a"\n',
        3,
        "nodes[0].kind",
        "missing required key 'kind' in [[nodes]] (one of: lmstudio, ollama",
        id="missing-key-points-at-header",
    ),
    pytest.param(
        '[nodes]\nname = "a"\n',
        1,
        "nodes",
        "write [[nodes]] (double brackets)",
        id="single-brackets-for-array",
    ),
    pytest.param(
        NODE_A + '\n[[nodes]]\nname = "b"\nkind = "ollama"\nurl = "http://b"\n\n'
        '[[nodes]]\nname = "a"\nkind = "lmstudio"\nurl = "http://c"\n',
        12,
        "nodes[2].name",
        "duplicate node name 'a' (first defined at line 2)",
        id="duplicate-node-name-line-of-second",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "htp://x"\n',
        4,
        "nodes[0].url",
        "'htp://x' is not a valid URL (expected http:// or https://)",
        id="bad-url-scheme",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "mac1.local:1234"\n',
        4,
        "nodes[0].url",
        "expected http:// or https://",
        id="url-without-scheme",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "lmstudio"\nurl = "http://mac1:1234/v1/"\n',
        4,
        "nodes[0].url",
        "give the base URL without /v1 ('http://mac1:1234')",
        id="url-with-v1",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "lmstudio"\nurl = "http://:1234"\n',
        4,
        "nodes[0].url",
        "has no host",
        id="url-without-host",
    ),
    pytest.param(
        '[[nodes]]\nname = "a"\nkind = "lmstudio"\nurl = "http://h/llm"\n',
        4,
        "nodes[0].url",
        "has a path ('/llm')",
        id="url-with-path",
    ),
    pytest.param(
        '[router]\nlisten = "4000"\n',
        2,
        "router.listen",
        "is not HOST:PORT",
        id="listen-no-host",
    ),
    pytest.param(
        '[router]\nlisten = "localhost:70000"\n',
        2,
        "router.listen",
        "port 70000 is out of range (1-65535)",
        id="listen-port-range",
    ),
    pytest.param(
        '[router]\nlisten = "localhost:http"\n',
        2,
        "router.listen",
        "port 'http' is not a number",
        id="listen-port-not-number",
    ),
    pytest.param(
        '[router]\nlisten = "::1:4000"\n',
        2,
        "router.listen",
        "IPv6 address in brackets",
        id="listen-ipv6-without-brackets",
    ),
    pytest.param(
        '[router]\napi_keys_env = [\n  "OK_NAME",\n  "not-a-name",\n]\n',
        4,
        "router.api_keys_env[1]",
        "'not-a-name' is not an environment variable name",
        id="env-name-in-multiline-array",
    ),
    pytest.param(
        '[[models]]\nname = "qwen"\naliases = ["q"]\n\n[[models]]\nname = "llama"\n'
        'aliases = ["l", "q"]\n',
        7,
        "models[1].aliases[1]",
        "alias 'q' of model 'llama' is already an alias of model 'qwen' (line 3)",
        id="alias-collides-with-alias",
    ),
    pytest.param(
        '[[models]]\nname = "qwen"\n\n[[models]]\nname = "llama"\naliases = ["qwen"]\n',
        6,
        "models[1].aliases[0]",
        "is already the name of model 'qwen' (line 2)",
        id="alias-collides-with-name",
    ),
    pytest.param(
        '[[models]]\nname = "qwen"\n\n[[models]]\nname = "qwen"\n',
        5,
        "models[1].name",
        "duplicate model name 'qwen' (also at line 2)",
        id="duplicate-model-name",
    ),
    pytest.param(
        'router.listen = "127.0.0.1:4000"\nrouter.queue_timeout = 0\n',
        2,
        "router.queue_timeout",
        "must be > 0",
        id="dotted-keys",
    ),
    pytest.param(
        'nodes = [\n  {name = "a", kind = "ollama", url = "http://a"},\n'
        '  {name = "b", kind = "ollama", url = "http://b", slots = 0},\n]\n',
        3,
        "nodes[1].slots",
        "must be >= 1, got 0",
        id="array-of-inline-tables",
    ),
    pytest.param(
        '[keymap]\ntheme = "T"\nthem = "x"\n',
        3,
        "keymap.them",
        "unknown binding 'them' in [keymap]; did you mean 'theme'? (bindings: quit, help,",
        id="keymap-unknown-binding",
    ),
    pytest.param(
        '[keymap]\nquit = [\n  "q",\n  "ctrl q",\n]\n',
        4,
        "keymap.quit[1]",
        "'ctrl q' is not a key; write a character",
        id="keymap-bad-key-in-array",
    ),
    pytest.param(
        '[keymap]\nhelp = "f1,ctl+h"\n',
        2,
        "keymap.help",
        "'ctl+h': 'ctl' is not a modifier (one of: alt, ctrl,",
        id="keymap-bad-modifier",
    ),
    pytest.param(
        "[keymap]\nhelp = 'Escape'\n",
        2,
        "keymap.help",
        "key names are lower case ('escape')",
        id="keymap-capitalised-name",
    ),
    pytest.param(
        "[keymap]\npin = []\n",
        2,
        "keymap.pin",
        "give at least one key",
        id="keymap-no-keys",
    ),
    pytest.param(
        "[keymap]\nquit = 'q'\nload = 5\n",
        3,
        "keymap.load",
        "expected a string or an array, got 5",
        id="keymap-wrong-type-names-its-key",
    ),
    pytest.param(
        _POOL_OK + "models = { a = '/m/a.gguf', b = 5 }\n",
        7,
        "nodes[0].pool.models.b",
        "expected a string, got 5",
        id="table-value-wrong-type-names-its-key",
    ),
    pytest.param(
        '[[nodes]]\nname = """tricky\n[[nodes]]\nname = "x"\n"""\nkind = "ollama"\n'
        'url = "http://a"\n\n[[nodes]]\nname = "b"\nkind = "ollama"\nurl = "http//b"\n',
        12,
        "nodes[1].url",
        "is not a valid URL",
        id="header-inside-multiline-string-is-not-a-header",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), ERROR_CASES)
def test_error_names_line_key_and_problem(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    err = load_error(tmp_path, text)
    assert (err.line, err.key) == (line, key), str(err)
    assert fragment in err.message
    assert str(err).startswith(f"{tmp_path / 'config.toml'}:{line}: {key}: ")


def test_str_reads_like_a_compiler_error(tmp_path: Path) -> None:
    nodes = "".join(
        f'[[nodes]]\nname = "n{i}"\nkind = "ollama"\nurl = "{url}"\n\n'
        for i, url in enumerate(["http://a", "http://b", "htp://x"])
    )
    path = write(tmp_path, nodes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:14: nodes[2].url: 'htp://x' is not a valid URL (expected http:// or https://)"
    )
    assert info.value.exit_code == 2


def test_secret_in_env_name_is_flagged_and_never_echoed(tmp_path: Path) -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 6
    err = load_error(tmp_path, NODE_A + f'api_key_env = "{secret}"\n')
    assert (err.line, err.key) == (5, "nodes[0].api_key_env")
    assert "looks like an API key itself" in err.message
    assert secret not in str(err)
    assert "sk-" not in str(err)


def test_long_value_in_env_name_is_treated_as_a_secret(tmp_path: Path) -> None:
    err = load_error(tmp_path, f'[router]\nadmin_token_env = "{"A" * 65}"\n')
    assert err.key == "router.admin_token_env"
    assert "A" * 65 not in str(err)


def test_toml_syntax_error_uses_tomllib_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[router]\nlisten = "127.0.0.1:4000"\nqueue_depth = \ncolour = 1\n')
    assert len(err.problems) == 1  # parsing cannot go on, so nothing past it is known
    assert err.line == 3
    assert err.key == ""
    assert err.message.startswith("invalid TOML: Invalid value")
    assert str(err).startswith(f"{tmp_path / 'config.toml'}:3: invalid TOML")


def test_duplicate_key_is_a_syntax_error_on_its_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, NODE_A + 'url = "http://b"\n')
    assert err.line == 5
    assert "Cannot overwrite a value" in err.message


def test_every_problem_in_the_file_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    # Schema problems (an unknown key, a range) and checks (a port) alike, written out of
    # the order msgspec or the checks meet them.
    text = (
        NODE_A
        + "slots = -1\n"
        + '\n[router]\nlisten = "127.0.0.1:99999"\ncolour = "red"\n'
        + "\n[poll]\ninterval = 0\n"
    )
    err = load_error(tmp_path, text)
    path = tmp_path / "config.toml"
    assert [(p.line, p.key) for p in err.problems] == [
        (5, "nodes[0].slots"),
        (8, "router.listen"),
        (9, "router.colour"),
        (12, "poll.interval"),
    ]
    lines = str(err).splitlines()
    assert lines[0] == f"{path}:5: nodes[0].slots: must be >= 1, got -1"
    assert lines[1] == (
        f"{path}:8: router.listen: '127.0.0.1:99999': port 99999 is out of range (1-65535)"
    )
    assert lines[2].startswith(f"{path}:9: router.colour: unknown key 'colour' in [router] (")
    assert lines[3] == f"{path}:12: poll.interval: must be > 0, got 0"
    assert len(lines) == 4
    # The first problem is also the error's own line, key and message.
    assert (err.line, err.key, err.message) == err.problems[0][1:]


def test_several_problems_of_the_checks_are_all_reported(tmp_path: Path) -> None:
    text = (
        '[router]\nlisten = "nope"\n\n'
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "ftp://a"\n'
        '\n[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "http://b"\n'
    )
    err = load_error(tmp_path, text)
    assert (err.line, err.key) == (2, "router.listen")
    assert [(p.line, p.key) for p in err.problems] == [
        (2, "router.listen"),
        (7, "nodes[0].url"),
        (10, "nodes[1].name"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[[nodes]]\nname = 5\nkind = "ollama"\nurl = "http://a"\n',
            [(2, "nodes[0].name")],
            id="bad-name-is-not-also-an-empty-name",
        ),
        pytest.param(
            '[[nodes]]\nname = "p"\nkind = "llamacpp-pol"\nurl = "http://a"\n'
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\n",
            [(3, "nodes[0].kind")],
            id="misspelt-kind-is-not-also-a-pool-on-the-wrong-kind",
        ),
        pytest.param(
            '[[nodes]]\nname = "p"\nkind = "llamacpp-pool"\nurl = "http://a"\npool = "x"\n',
            [(5, "nodes[0].pool")],
            id="bad-pool-is-not-also-a-missing-pool",
        ),
        pytest.param(
            "[[models]]\naliases = ['q']\n\n[[models]]\nname = 'q'\n",
            [(1, "models[0].name")],
            id="missing-name-is-not-also-empty-and-its-alias-does-not-clash",
        ),
        pytest.param(
            "[router]\napi_keys_env = ['OK', 3, 'not a name']\n",
            [(2, "router.api_keys_env[1]"), (2, "router.api_keys_env[2]")],
            id="bad-array-item-and-the-next",
        ),
        pytest.param(
            "nodes = [1, 2]\n",
            [(1, "nodes[0]"), (1, "nodes[1]")],
            id="array-items-that-are-not-tables",
        ),
    ],
)
def test_a_stand_in_for_a_bad_value_raises_no_problems_of_its_own(
    tmp_path: Path, text: str, expected: list[tuple[int, str]]
) -> None:
    err = load_error(tmp_path, text)
    assert [(p.line, p.key) for p in err.problems] == expected, str(err)


def test_problems_are_bounded(tmp_path: Path) -> None:
    err = load_error(tmp_path, "".join(f"k{i} = {i}\n" for i in range(80)))
    assert len(err.problems) == 50
    assert err.problems[0].key == "k0" and err.problems[-1].key == "k49"


def test_missing_file_is_an_error_with_line_zero(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 0
    assert str(info.value) == f"{path}: file not found"


def test_directory_and_binary_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[router]\nlisten = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as info:
        load_config(path)
    assert info.value.line == 2


def test_config_error_survives_pickling() -> None:
    err = ConfigError(Path("c.toml"), 3, "router.listen", "bad")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "c.toml:3: router.listen: bad"
    several = ConfigError.of([err.problems[0], err.problems[0]._replace(line=5, key="")])
    again = pickle.loads(pickle.dumps(several))
    assert str(again) == str(several) == "c.toml:3: router.listen: bad\nc.toml:5: bad"


# --- valid configs and defaults -----------------------------------------------------------


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "# nothing yet\n"))
    assert cfg == Config()
    assert cfg.router.listen == "127.0.0.1:4000"
    assert cfg.router.strategy == "efficiency"
    assert cfg.poll.interval == 1.0
    assert cfg.pool.reserved_gb == 8.0


def test_valid_config_loads_with_defaults_filled(tmp_path: Path) -> None:
    text = NODE_A + (
        "ssh = { user = 'me', key_file = '~/.ssh/k' }\n\n"
        "[[nodes]]\nname = 'b'\nkind = 'llamacpp'\nurl = 'https://b.example:8443/'\n"
        "reserved_gb = 4\n[nodes.ssh]\nhost = 'jump.example'\n\n"
        "[router]\nlisten = '[::1]:4100'\n\n"
        "[[models]]\nname = 'qwen'\naliases = ['q']\npinned = true\n"
    )
    cfg = load_config(write(tmp_path, text))
    a, b = cfg.nodes
    assert a.kind is NodeKind.OLLAMA
    assert a.ssh is not None and b.ssh is not None
    # The SSH host defaults to the URL's host; an explicit one is kept.
    assert a.ssh.host == "a.local"
    assert b.ssh.host == "jump.example"
    assert a.ssh.key_file == os.path.expanduser("~/.ssh/k")
    assert a.ssh.port == 22 and a.ssh.os == "auto"
    assert cfg.reserved_bytes(a) == 8 * 1024**3
    assert cfg.reserved_bytes(b) == 4 * 1024**3
    assert parse_listen(cfg.router.listen) == ("::1", 4100)
    assert cfg.model("q") is cfg.models[0]
    assert cfg.resolve_model("q") == "qwen"
    assert cfg.resolve_model("other") == "other"


def test_keymap_takes_a_key_comma_separated_keys_or_an_array(tmp_path: Path) -> None:
    text = "[keymap]\ntheme = 'T'\nquit = 'q, ctrl+q'\nhelp = ['f1', '?']\nfilter = [',']\n"
    with pytest.raises(ConfigError, match="write 'comma' for the , key"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="an empty key"):
        load_config(write(tmp_path, text.replace("[',']", "'a,,b'")))
    cfg = load_config(write(tmp_path, text.replace("','", "'comma'")))
    assert key_strings(cfg.keymap) == {
        "theme": "T",
        "quit": "q,ctrl+q",
        "help": "f1,?",
        "filter": "comma",
    }
    assert load_config(write(tmp_path, "")).keymap == {}


def test_integers_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[poll]\ninterval = 2\n"))
    assert cfg.poll.interval == 2.0


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "config.example.toml")
    assert [n.kind for n in cfg.nodes] == [
        NodeKind.LMSTUDIO,
        NodeKind.LMSTUDIO,
        NodeKind.OLLAMA,
        NodeKind.LLAMACPP,
    ]
    llama = cfg.node("llama-box")
    assert llama.ssh is not None and llama.ssh.host == "10.0.0.22"


def test_example_config_documents_every_key() -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    # Every key appears as "key = ..." (set, or commented out at its default).
    written = {line.lstrip("# ").split("=")[0].strip() for line in text.splitlines() if "=" in line}
    structs: list[type[msgspec.Struct]] = [
        NodeConfig,
        SshConfig,
        PollConfig,
        RouterConfig,
        PoolConfig,
        ModelConfig,
        PoolNodeConfig,
        PeerConfig,
        WebConfig,
    ]
    missing = [
        f"{struct.__name__}.{field.encode_name}"
        for struct in structs
        for field in msgspec.structs.fields(struct)
        if field.encode_name not in written and field.encode_name not in ("ssh", "pool")
    ]
    assert missing == []
    tables = {
        "[[nodes]]",
        "[nodes.ssh]",
        "[poll]",
        "[router]",
        "[pool]",
        "[[models]]",
        "[keymap]",
        "[web]",
    }
    assert tables <= {line.strip() for line in text.splitlines()}


# --- the TOML locator -----------------------------------------------------------------------

_keys = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_scalars = st.one_of(st.integers(), st.booleans(), st.text(max_size=8), st.floats(width=32))
_tables = st.recursive(
    st.dictionaries(_keys, _scalars, max_size=4),
    lambda inner: st.dictionaries(
        _keys, st.one_of(inner, st.lists(inner, min_size=1, max_size=3)), max_size=3
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(_tables)
def test_locator_finds_every_key_that_tomli_w_writes(data: dict) -> None:
    text = tomli_w.dumps(data)
    lines = key_lines(text)
    source = text.split("\n")

    def walk(value: object, path: tuple) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                assert (*path, k) in lines, (path, k, text)
                assert k in source[lines[(*path, k)] - 1]
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                assert (*path, i) in lines, (path, i, text)
                walk(v, (*path, i))

    walk(data, ())


def test_locator_handles_quoted_keys_and_comments() -> None:
    text = "# c\n[ 'we ird' . \"k\\u0041\" ]  # header\nx = [1, # one\n  2]\n"
    lines = key_lines(text)
    assert lines[("we ird", "kA")] == 2
    assert lines[("we ird", "kA", "x", 1)] == 4
    assert tomllib.loads(text) == {"we ird": {"kA": {"x": [1, 2]}}}


# --- finding the config file ----------------------------------------------------------------


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(lmtui.config.paths, "config_dir", lambda: home)
    monkeypatch.delenv("LMTUI_CONFIG", raising=False)
    return home


def test_find_config_prefers_cli_then_env_then_default(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = write(config_home, "")
    env_file = write(tmp_path, "", "env.toml")
    cli_file = write(tmp_path, "", "cli.toml")
    assert lmtui.config.paths.find_config(None) == default
    monkeypatch.setenv("LMTUI_CONFIG", str(env_file))
    assert lmtui.config.paths.find_config(None) == env_file
    assert lmtui.config.paths.find_config(cli_file) == cli_file


def test_find_config_without_any_file_is_none(config_home: Path) -> None:
    assert lmtui.config.paths.find_config(None) is None


def test_explicit_config_that_does_not_exist_is_an_error(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(config_home, "")  # a default exists, but must not be used as a fallback
    with pytest.raises(ConfigError, match=r"not found \(given with --config\)") as info:
        lmtui.config.paths.find_config(tmp_path / "typo.toml")
    assert info.value.line == 0
    monkeypatch.setenv("LMTUI_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(ConfigError, match="named by LMTUI_CONFIG"):
        lmtui.config.paths.find_config(None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout is Linux's")
def test_directories_follow_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var))
    assert lmtui.config.paths.config_dir() == tmp_path / "XDG_CONFIG_HOME" / "lmtui"
    assert (
        lmtui.config.paths.overrides_path()
        == tmp_path / "XDG_STATE_HOME" / "lmtui" / "overrides.toml"
    )
    assert lmtui.config.paths.data_dir() == tmp_path / "XDG_DATA_HOME" / "lmtui"
    assert lmtui.config.paths.themes_dir() == tmp_path / "XDG_CONFIG_HOME" / "lmtui" / "themes"


# --- overrides -------------------------------------------------------------------------------


def test_overrides_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "overrides.toml"  # the directory is created on save
    ov = Overrides(pinned=["qwen"], unpinned=["llama"], strategy="spread", drained=["mac2"])
    save_overrides(path, ov)
    assert load_overrides(path) == ov
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# lmtui run-time changes")
    assert tomllib.loads(text) == {
        "pinned": ["qwen"],
        "unpinned": ["llama"],
        "strategy": "spread",
        "drained": ["mac2"],
    }
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_the_overrides_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """SECURITY.md: lmtui's own files are 0600 (mkstemp's mode survives the rename)."""
    path = tmp_path / "overrides.toml"
    save_overrides(path, Overrides(drained=["mac2"]))
    assert path.stat().st_mode & 0o777 == 0o600
    save_overrides(path, Overrides())  # and every later save
    assert path.stat().st_mode & 0o777 == 0o600


def test_empty_overrides_write_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "overrides.toml"
    save_overrides(path, Overrides())
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {}
    assert load_overrides(path) == Overrides()


def test_missing_overrides_file_means_none(tmp_path: Path) -> None:
    assert load_overrides(tmp_path / "overrides.toml") == Overrides()


@pytest.mark.parametrize(
    "text",
    ["pinned = [\n", "strategy = 'fastest'\n", "pinned = ['a']\ncolour = 'red'\n"],
    ids=["bad-toml", "bad-strategy", "unknown-key"],
)
def test_corrupt_overrides_are_kept_aside_and_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "overrides.toml"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lmtui.config.overrides"):
        assert load_overrides(path) == Overrides()
    assert not path.exists()
    assert corrupt_path(path).read_text(encoding="utf-8") == text
    assert "corrupt overrides" in caplog.text
    # The next save starts a fresh, valid file.
    save_overrides(path, Overrides(drained=["a"]))
    assert load_overrides(path) == Overrides(drained=["a"])


def test_strict_load_reports_the_line_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "overrides.toml"
    path.write_text("pinned = ['a']\nstrategy = 'fastest'\ncolour = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_overrides(path, strict=True)
    assert (info.value.line, info.value.key) == (2, "strategy")
    assert [p.key for p in info.value.problems] == ["strategy", "colour"]
    assert path.exists()


def test_overrides_update_methods_record_only_differences() -> None:
    ov = Overrides()
    ov = ov.set_pinned("qwen", True, config_pinned=False)
    ov = ov.set_pinned("llama", False, config_pinned=True)
    ov = ov.set_drained("mac2", True).set_drained("mac1", True).set_drained("mac2", False)
    ov = ov.set_strategy("replicas")
    assert ov == Overrides(
        pinned=["qwen"], unpinned=["llama"], strategy="replicas", drained=["mac1"]
    )
    # Re-pinning a config-pinned model only removes the unpin: the file returns to the config.
    ov = ov.set_pinned("llama", True, config_pinned=True).set_pinned(
        "qwen", False, config_pinned=False
    )
    assert ov.pinned == [] and ov.unpinned == []
    assert ov.set_strategy(None).strategy is None


def test_apply_overrides_layers_over_config(tmp_path: Path) -> None:
    text = NODE_A + (
        "\n[[nodes]]\nname = 'b'\nkind = 'ollama'\nurl = 'http://b'\n"
        "\n[[models]]\nname = 'qwen'\naliases = ['q']\npinned = true\n"
        "\n[[models]]\nname = 'llama'\npinned = true\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.apply_overrides(Overrides()).pinned == {"qwen", "llama"}
    eff = cfg.apply_overrides(
        Overrides(pinned=["gemma"], unpinned=["q"], strategy="spread", drained=["b", "gone"])
    )
    assert eff.pinned == {"llama", "gemma"}  # the alias 'q' unpinned 'qwen'
    assert eff.strategy == "spread"
    assert eff.drained == {"b"}  # a node no longer in the config is dropped
    assert cfg.apply_overrides(Overrides()).strategy == "efficiency"
    # The config itself is untouched.
    assert [m.pinned for m in cfg.models] == [True, True]


def test_failed_write_leaves_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "overrides.toml"
    old = Overrides(pinned=["qwen"], strategy="spread")
    save_overrides(path, old)

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lmtui.config.overrides.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        save_overrides(path, Overrides(pinned=["other"] * 1000))
    monkeypatch.undo()
    assert load_overrides(path, strict=True) == old
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was cleaned up


_CRASHING_WRITER = """
import os, sys
from pathlib import Path
import lmtui.config.overrides as o

def die_after_partial_write(fd):
    # Power cut: half the new text reached the temp file, then the process is gone.
    os.ftruncate(fd, os.fstat(fd).st_size // 2)
    os._exit(9)

o.os.fsync = die_after_partial_write
o.save_overrides(Path(sys.argv[1]), o.Overrides(pinned=["new"] * 50, drained=["x"]))
"""


def test_survives_a_crash_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "overrides.toml"
    old = Overrides(pinned=["qwen"], drained=["mac2"])
    save_overrides(path, old)
    before = path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(path)],
        capture_output=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    # The half-written temp file exists, but it never replaced the real one.
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(leftovers[0].read_text(encoding="utf-8"))  # truly half a file
    assert path.read_bytes() == before
    assert load_overrides(path, strict=True) == old
    # And lmtui can save again afterwards.
    save_overrides(path, Overrides(strategy="replicas"))
    assert load_overrides(path) == Overrides(strategy="replicas")


# --- llamacpp-pool nodes --------------------------------------------------------------------

_POOL_NODE = """\
[[nodes]]
name = "p"
kind = "{kind}"
url = "http://127.0.0.1:8080"
"""


def test_the_commented_pool_example_loads_once_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    start = text.index('# [[nodes]]\n# name = "gpu-box"')
    block = text[start : text.index("\n\n", start)]
    lines = [ln[2:] for ln in block.splitlines()]
    cfg = load_config(write(tmp_path, "\n".join(ln for ln in lines if not ln.startswith("#"))))
    (node,) = cfg.nodes
    assert node.kind is NodeKind.LLAMACPP_POOL and node.pool is not None
    assert node.pool.port_range() == (41000, 41099)
    assert node.pool.models == {"qwen-coder": "/srv/models/Qwen2.5-Coder-7B-Q4_K_M.gguf"}
    assert (node.pool.start_timeout, node.pool.stop_grace) == (120.0, 10.0)


@pytest.mark.parametrize(
    ("extra", "kind", "line", "key", "message"),
    [
        ("", "llamacpp-pool", 3, "nodes[0].kind", "needs a [nodes.pool] section"),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\n",
            "llamacpp",
            5,
            "nodes[0].pool",
            'only for kind = "llamacpp-pool"',
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nports = '9-3'\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.ports",
            "is empty",
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nports = '1-99999'\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.ports",
            "within 1-65535",
        ),
        ("[nodes.pool]\nbinary = 'x'\n", "llamacpp-pool", 5, "nodes[0].pool", "set models_dir"),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels = { 'a@b' = '/m/a.gguf' }\n",
            "llamacpp-pool",
            7,
            "nodes[0].pool.models.a@b",
            "not a usable model name",
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nargs = ['-c', '4', '--port', '5']\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.args[2]",
            "--port is set by lmtui",
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nargs = ['--api-key=k']\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.args[0]",
            "set the node's api_key_env",
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nhost = '0.0.0.0'\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.host",
            "cannot be reached",
        ),
        (
            "[nodes.pool]\nbinary = 'x'\nmodels_dir = '/m'\nport = 4\n",
            "llamacpp-pool",
            8,
            "nodes[0].pool.port",
            "unknown key 'port'",
        ),
    ],
)
def test_pool_section_problems_name_line_and_key(
    tmp_path: Path, extra: str, kind: str, line: int, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, _POOL_NODE.format(kind=kind) + extra))
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert message in err.message
    assert isinstance(PoolNodeConfig(binary="b").port_range(), tuple)


def test_allowed_origins_must_be_origins_and_the_router_limits_load(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """
        [router]
        allowed_hosts = ["lmtui.lan"]
        allowed_origins = ["https://chat.example", "chat.example", "https://a.b/path"]
        idle_timeout = 30
        max_answer_bytes = 1048576
        """
        + NODE_A,
    )
    text = str(err)
    assert "allowed_origins[1]" in text and "allowed_origins[2]" in text
    assert "allowed_origins[0]" not in text
    cfg = load_config(
        write(
            tmp_path,
            """
            [router]
            allowed_origins = ["https://chat.example"]
            idle_timeout = 30
            max_answer_bytes = 1048576
            """
            + NODE_A,
        )
    )
    assert cfg.router.allowed_origins == ["https://chat.example"]
    assert (cfg.router.idle_timeout, cfg.router.max_answer_bytes) == (30, 1048576)
