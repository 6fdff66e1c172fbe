"""Settings: each declared once, validated with one clear line, and config.env and the README kept in step."""

import re

import pytest
from dotenv import dotenv_values

from helpers.processes import ROOT, run_python
from servicekit.settings import (
    TABLE_END,
    TABLE_START,
    ClientSettings,
    ServerSettings,
    SettingsError,
    declared,
    load,
    render_config_env,
    updated_readme,
)

CONFIG_ENV = ROOT / "config.env"
REQUIRED = {"SERVICE_NAME": "things", "MYSQL_USER": "things", "MYSQL_PASSWORD": "pw", "MYSQL_DATABASE": "things"}


def test_declared_defaults_apply_and_the_environment_overrides_config_env(tmp_path):
    config = tmp_path / "config.env"
    config.write_text("THRIFT_PORT=7000\nTHRIFT_WORKERS=3\n")
    settings = load(ServerSettings, config, {**REQUIRED, "THRIFT_WORKERS": "5"})
    assert (settings.thrift_port, settings.thrift_workers, settings.db_pool) == (7000, 5, "persistent")
    assert settings.thrift_read_timeout == 10.0 and isinstance(settings.thrift_read_timeout, float)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("THRIFT_PORT", "http", "THRIFT_PORT must be a whole number, not 'http'"),
        ("MYSQL_CONNECT_TIMEOUT", "0.5", "MYSQL_CONNECT_TIMEOUT must be a whole number, not '0.5'"),
        ("THRIFT_READ_TIMEOUT", "soon", "THRIFT_READ_TIMEOUT must be a number, not 'soon'"),
        ("THRIFT_PORT", "70000", "THRIFT_PORT must be between 1 and 65535, not '70000'"),
        (
            "THRIFT_MAX_MESSAGE_BYTES",
            "2000000000",
            "THRIFT_MAX_MESSAGE_BYTES must be between 1024 and 1073741824, not '2000000000'",
        ),
        ("THRIFT_WORKERS", "", "THRIFT_WORKERS must be a whole number, not ''"),
        ("DB_POOL", "magic", "DB_POOL must be one of persistent, pooled, not 'magic'"),
        ("SERVICE_NAME", "Bad-Name", "SERVICE_NAME must match [a-z][a-z0-9_]{0,30}, not 'Bad-Name'"),
        ("SERVICE_NAME", "", "SERVICE_NAME is empty: write SERVICE_NAME=VALUE"),
        ("MYSQL_DATABASE", "", "MYSQL_DATABASE is empty: write MYSQL_DATABASE=VALUE"),
        ("MYSQL_USER", "", "MYSQL_USER is empty: write MYSQL_USER=VALUE"),
        ("MYSQL_HOST", "", "MYSQL_HOST is empty: write MYSQL_HOST=VALUE"),
        ("THRIFT_WORKERS", "1_0", "THRIFT_WORKERS must be a whole number, not '1_0'"),
        ("THRIFT_DRAIN_TIMEOUT", "\u0665", "THRIFT_DRAIN_TIMEOUT must be a number, not '\u0665'"),
    ],
)
def test_a_bad_value_names_the_variable(tmp_path, variable, value, message):
    with pytest.raises(SettingsError) as error:
        load(ServerSettings, tmp_path / "none.env", {**REQUIRED, variable: value})
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("kind", "variable", "needed"),
    [
        (ServerSettings, "THRIFT_TLS_KEY", "THRIFT_TLS_CERT"),
        (ServerSettings, "THRIFT_TLS_CLIENT_CA", "THRIFT_TLS_CERT"),
        (ServerSettings, "MYSQL_SSL_CERT", "MYSQL_SSL_CA"),
        (ClientSettings, "CLIENT_TLS_CERT", "CLIENT_TLS_CA"),
    ],
)
def test_a_setting_that_only_works_with_another_is_refused_alone(tmp_path, kind, variable, needed):
    with pytest.raises(SettingsError) as error:
        load(kind, tmp_path / "none.env", {**REQUIRED, variable: "/etc/some.pem"})
    assert str(error.value) == f"{variable} is set but {needed} is empty: {variable} takes effect only with {needed}"


@pytest.mark.parametrize("message_bytes", ["1048576", "65536"], ids=["far below", "equal"])
def test_a_buffer_bound_below_the_largest_request_stops_the_server_before_it_cuts_such_a_request_off(message_bytes):
    # With 64 KiB held at most, a request of 300 kB (allowed by THRIFT_MAX_MESSAGE_BYTES) was closed as it arrived;
    # so was a framed one of exactly 64 KiB, held with its frame's header while its last bytes were on their way.
    result = run_python(
        "tests/servicekit/counters.py",
        SERVICE_NAME="counters",
        THRIFT_MAX_MESSAGE_BYTES=message_bytes,
        THRIFT_MAX_BUFFERED_BYTES="65536",
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: THRIFT_MAX_BUFFERED_BYTES (65536) is less than THRIFT_MAX_MESSAGE_BYTES ({message_bytes}) and a"
        " frame's 4-byte header: a request that long could never be held; raise the first\n"
    )


def test_a_setting_without_a_default_must_be_set(tmp_path):
    config = tmp_path / "config.env"
    config.write_text("THRIFT_WORKERS=2\n")
    with pytest.raises(SettingsError, match=r"^MYSQL_PASSWORD is not set \(add it to config.env\)$"):
        load(ServerSettings, config, {k: v for k, v in REQUIRED.items() if k != "MYSQL_PASSWORD"})


def test_a_client_py_without_its_config_env_is_told_where_it_was_looked_for(tmp_path):
    for name in ("client.py", "service.thrift", "servicekit"):  # all it needs but config.env, the one beside it
        (tmp_path / name).symlink_to(ROOT / name)
    result = run_python(str(tmp_path / "client.py"), "ping")
    assert result.returncode == 2
    assert (
        result.stderr == f"error: SERVICE_NAME is not set (add it to config.env; there is no {tmp_path}/config.env)\n"
    )


def test_a_misspelled_setting_in_config_env_is_refused(tmp_path):
    config = tmp_path / "config.env"
    config.write_text("THRIFT_WORKERS=2\nTHRIFT_WORKER=8\n")
    with pytest.raises(SettingsError) as error:
        load(ServerSettings, config, REQUIRED)
    assert str(error.value) == "config.env: THRIFT_WORKER is not a setting: did you mean THRIFT_WORKERS?"


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            ServerSettings,
            "THRIFT_WORKERS=2\nTHRIFT_PORT\n",
            "config.env line 2: THRIFT_PORT has no value: write THRIFT_PORT=VALUE",
        ),
        (ClientSettings, "CLIENT_TLS_CA\n", "config.env line 1: CLIENT_TLS_CA has no value: write CLIENT_TLS_CA=VALUE"),
        (
            ServerSettings,
            'THRIFT_WORKERS=2\n\n# the port\n\nTHRIFT_PORT="19391\nTHRIFT_IDLE_TIMEOUT=60\n',
            "config.env line 5: THRIFT_PORT: not NAME=value (a quote left open?)",
        ),
        (
            ServerSettings,
            "MYSQL_ROOT_PASSWORD='Hunter2-secret\n",
            "config.env line 1: MYSQL_ROOT_PASSWORD: not NAME=value (a quote left open?)",
        ),
        (ServerSettings, "=9090\n", "config.env line 1: not NAME=value (a quote left open?)"),
        (ServerSettings, "'Hunter2-secret\n", "config.env line 1: not NAME=value (a quote left open?)"),
        (
            ServerSettings,
            'THRIFT_HOST="a\nTHRIFT_PORT=1"\n',
            "config.env line 1: THRIFT_HOST's value spans lines (a quote left open?)",
        ),
        (
            ServerSettings,
            'TZ=UTC\nMYSQL_ROOT_PASSWORD="root\nTHRIFT_PORT=1"\n',
            "config.env line 2: MYSQL_ROOT_PASSWORD's value spans lines (a quote left open?)",
        ),
    ],
    ids=[
        "bare setting",
        "bare TLS setting",
        "unclosed quote",
        "another program's variable, unclosed",
        "no name",
        "a value alone, unclosed: not shown",
        "a quote closed a line later",
        "another program's variable, a quote closed a line later",
    ],
)
def test_a_config_env_line_that_gives_no_value_is_refused_naming_its_line(tmp_path, kind, text, message):
    config = tmp_path / "config.env"  # python-dotenv would skip the line, and the default would apply
    config.write_text(text)
    with pytest.raises(SettingsError) as error:
        load(kind, config, REQUIRED)
    assert str(error.value) == message


def test_config_env_may_hold_the_database_containers_variables(tmp_path):
    config = tmp_path / "config.env"  # docker-compose gives the file to the MySQL container too
    config.write_text("THRIFT_WORKERS=2\nMYSQL_ROOT_PASSWORD=root-secret\nTZ=UTC\n")
    assert load(ServerSettings, config, REQUIRED).thrift_workers == 2


def test_an_escaped_line_break_in_a_quoted_value_is_no_line_left_open(tmp_path):
    config = tmp_path / "config.env"
    config.write_text('THRIFT_WORKERS=2\nMYSQL_PASSWORD="ab\\ncd"\n')  # python-dotenv makes \n a line break
    assert (
        load(ServerSettings, config, {k: v for k, v in REQUIRED.items() if k != "MYSQL_PASSWORD"}).mysql_password
        == "ab\ncd"
    )


def test_a_misspelled_setting_in_the_environment_is_warned_of_by_the_server(start_server):
    server = start_server(THRIFT_WORKER="8", MYSQL_PWD="for the mysql client", LOGLEVEL="debug")
    with server.client() as client:
        assert client.ping() == "pong"
    log = server.log()
    assert re.search(r" WARNING \S+ \[\d+\] THRIFT_WORKER is not a setting: did you mean THRIFT_WORKERS\?", log)
    assert re.search(r" WARNING \S+ \[\d+\] LOGLEVEL is not a setting: did you mean LOG_LEVEL\?", log)
    assert "MYSQL_PWD" not in log


def test_a_config_env_that_is_not_utf_8_is_one_line_naming_it(tmp_path):
    config = tmp_path / "config.env"
    config.write_bytes(b"# caf\xe9\nTHRIFT_WORKERS=2\n")
    with pytest.raises(SettingsError) as error:
        load(ServerSettings, config, REQUIRED)
    assert str(error.value) == "config.env is not UTF-8 text (byte 0xe9): save it as UTF-8"


def test_a_config_env_that_is_a_directory_is_one_line_naming_it(tmp_path):
    config = tmp_path / "config.env"
    config.mkdir()  # what Docker makes to bind-mount a file that is missing
    with pytest.raises(SettingsError) as error:
        load(ServerSettings, config, REQUIRED)
    assert str(error.value) == f"cannot read {config}: Is a directory"


def test_the_password_never_shows_in_repr(tmp_path):
    settings = load(ServerSettings, tmp_path / "none.env", {**REQUIRED, "MYSQL_PASSWORD": "Hunter2-secret"})
    assert "Hunter2-secret" not in repr(settings)


def test_the_client_reads_only_its_own_settings(tmp_path):
    settings = load(ClientSettings, tmp_path / "none.env", {"SERVICE_NAME": "things", "MYSQL_PORT": "abc"})
    assert settings.client_timeout == 10 and not hasattr(settings, "mysql_port")


def test_config_env_lists_every_setting_once_with_its_meaning():
    text = CONFIG_ENV.read_text()
    assert text == render_config_env(text), (
        "config.env is out of step with servicekit/settings.py: "
        "run `python -m servicekit.settings update config.env README.md`"
    )
    assert list(dotenv_values(CONFIG_ENV)) == [f.name.upper() for f in declared()]
    load(ServerSettings, CONFIG_ENV, {})
    load(ClientSettings, CONFIG_ENV, {})


def test_the_readme_settings_table_is_the_declarations():
    readme = (ROOT / "README.md").read_text()
    assert readme == updated_readme(readme), "run `python -m servicekit.settings update config.env README.md`"
    for setting in declared():
        assert f"| `{setting.name.upper()}` |" in readme


@pytest.mark.parametrize(
    "readme",
    [
        "# Notes\n\nNo table here.\n",
        f"# Notes\n\n{TABLE_START}\n| old |\n\n## Operations\n\nimportant text\n",  # its end line lost
    ],
    ids=["no markers", "no end marker"],
)
def test_updating_a_readme_without_both_table_markers_changes_nothing_and_says_so(tmp_path, readme):
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    readme_md.write_text(readme)
    config_env.write_text("THRIFT_PORT=7000\n")
    result = run_python("-m", "servicekit.settings", "update", str(config_env), str(readme_md))
    assert result.returncode == 1
    markers = f"one {TABLE_START} line and, after it, one {TABLE_END} line"
    assert result.stderr == f"error: {readme_md}: the README needs {markers}\n"
    assert readme_md.read_text() == readme
    assert config_env.read_text() == "THRIFT_PORT=7000\n"


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ("THRIFT_PORT", "config.env line 2: THRIFT_PORT has no value: write THRIFT_PORT=VALUE"),
        ("MYSQL_PASSWORD='secret", "config.env line 2: MYSQL_PASSWORD: not NAME=value (a quote left open?)"),
        ("MYSQL_READ_TIMEOT=20", "config.env: MYSQL_READ_TIMEOT is not a setting: did you mean MYSQL_READ_TIMEOUT?"),
    ],
    ids=["bare name", "open quote", "misspelled name"],
)
def test_updating_refuses_a_config_env_the_server_would_refuse_and_leaves_it_as_it_was(tmp_path, line, refusal):
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    config_env.write_text(f"SERVICE_NAME=things\n{line}\n")
    readme = f"# Notes\n\n{TABLE_START}\n| old |\n{TABLE_END}\n"
    readme_md.write_text(readme)
    result = run_python("-m", "servicekit.settings", "update", str(config_env), str(readme_md))
    assert (result.returncode, result.stderr) == (1, f"error: {refusal}\n")
    assert config_env.read_text() == f"SERVICE_NAME=things\n{line}\n"
    assert readme_md.read_text() == readme


def test_updating_keeps_each_variable_as_written(tmp_path):
    # Rewritten from their values, a quoted " #" would start a comment, a reference would be expanded from
    # the environment of whoever ran the update (a secret written into the file), a bare name would become empty.
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    written = ['MYSQL_PASSWORD="correct horse #1"', "MYSQL_USER=${DB_USER}", "TZ", "MYSQL_ROOT_PASSWORD='${ROOT}'"]
    config_env.write_text("SERVICE_NAME=things\n" + "\n".join(written) + "\n")
    readme_md.write_text(f"# Notes\n\n{TABLE_START}\n| old |\n{TABLE_END}\n")
    result = run_python(
        "-m", "servicekit.settings", "update", str(config_env), str(readme_md), DB_USER="leaked", ROOT="leaked"
    )
    assert (result.returncode, result.stderr) == (0, "")
    lines = config_env.read_text().splitlines()
    assert all(line in lines for line in written), [line for line in lines if "leaked" in line or "horse" in line]
    assert dotenv_values(config_env, interpolate=False)["MYSQL_PASSWORD"] == "correct horse #1"


def test_updating_keeps_every_line_that_is_not_a_setting_where_it_was(tmp_path):
    # docker-compose gives the file to the database's container too: its variables, and the comments on them,
    # stay next to what they were written by.
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    config_env.write_text(
        "TZ=Europe/Paris\nSERVICE_NAME=things\nMYSQL_ROOT_PASSWORD=root-secret\nTHRIFT_PORT=7000\n\n"
        "# the database container's own\nMARIADB_AUTO_UPGRADE=1\n"
    )
    readme_md.write_text(f"# Notes\n\n{TABLE_START}\n| old |\n{TABLE_END}\n")
    result = run_python("-m", "servicekit.settings", "update", str(config_env), str(readme_md))
    assert (result.returncode, result.stderr) == (0, "")
    lines = config_env.read_text().splitlines()
    assert lines.index("TZ=Europe/Paris") < lines.index("SERVICE_NAME=things")
    assert lines[lines.index("SERVICE_NAME=things") + 1] == "MYSQL_ROOT_PASSWORD=root-secret"
    at = lines.index("THRIFT_PORT=7000")
    assert lines[at + 1 : at + 4] == ["", "# the database container's own", "MARIADB_AUTO_UPGRADE=1"]
    updated = config_env.read_text()
    assert run_python("-m", "servicekit.settings", "update", str(config_env), str(readme_md)).returncode == 0
    assert config_env.read_text() == updated


@pytest.mark.parametrize("asked", ["--help", "-h"])
def test_updating_answers_help_on_stdout(asked):
    result = run_python("-m", "servicekit.settings", asked)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "usage: python -m servicekit.settings update CONFIG_ENV README\n",
        "",
    )


def test_updating_reads_and_writes_utf_8_whatever_the_locale(tmp_path):
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    config_env.write_text("SERVICE_NAME=things\nTZ=Europe/Paris  # café\n", encoding="utf-8")
    readme_md.write_text(f"# Notes — 5 µs\n\n{TABLE_START}\n| old |\n{TABLE_END}\n", encoding="utf-8")
    result = run_python(
        "-m", "servicekit.settings", "update", str(config_env), str(readme_md), LC_ALL="C", PYTHONUTF8="0"
    )
    assert (result.returncode, result.stderr) == (0, "")  # the C locale's encoding is ASCII
    assert readme_md.read_text(encoding="utf-8").startswith("# Notes — 5 µs\n")
    assert "café" in config_env.read_text(encoding="utf-8")


def test_updating_a_readme_that_is_not_utf_8_changes_nothing_and_says_so(tmp_path):
    config_env, readme_md = tmp_path / "config.env", tmp_path / "README.md"
    config_env.write_text("SERVICE_NAME=things\n")
    readme_md.write_bytes(f"# caf\xe9\n\n{TABLE_START}\n| old |\n{TABLE_END}\n".encode("latin-1"))
    result = run_python("-m", "servicekit.settings", "update", str(config_env), str(readme_md))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: {readme_md}: not UTF-8 text (byte 0xe9): save it as UTF-8\n",
    )
    assert config_env.read_text() == "SERVICE_NAME=things\n"


def test_updating_a_config_env_that_does_not_exist_makes_none_and_says_so(tmp_path):
    mistyped, readme_md = tmp_path / "confg.env", tmp_path / "README.md"
    readme = f"# Notes\n\n{TABLE_START}\n| old |\n{TABLE_END}\n"
    readme_md.write_text(readme)
    result = run_python("-m", "servicekit.settings", "update", str(mistyped), str(readme_md))
    assert (result.returncode, result.stderr) == (1, f"error: there is no {mistyped}\n")
    assert not mistyped.exists() and readme_md.read_text() == readme
