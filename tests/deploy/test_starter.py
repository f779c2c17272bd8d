"""``gateway init DIR``: the starter set from the example files the package ships, and its refusals."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import cli
from gateway.config import load_settings

REPOSITORY = Path(__file__).parent.parent.parent


def init(directory: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["init", str(directory)], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_init_writes_a_starter_set_whose_paths_stay_inside_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    code, out, err = init(site)
    assert code == 0, err
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*")) == [
        "README.txt", "directory.yaml", "gateway.toml", "rules", "rules/example.yaml",
    ]  # fmt: skip
    assert f"wrote {site / 'gateway.toml'}" in out

    settings = load_settings(site / "gateway.toml", {})
    assert settings.gateway.data_dir == site / "data"
    assert settings.rules.dir == site / "rules"
    assert settings.database_url == f"sqlite+aiosqlite:///{site / 'data' / 'gateway.db'}"
    assert settings.secrets.token_key_files == (site / "data" / "secrets" / "token.key",)


def test_the_starter_set_is_the_repositorys_example(tmp_path: Path) -> None:
    init(tmp_path / "site")
    site = tmp_path / "site"
    assert (site / "directory.yaml").read_text() == (REPOSITORY / "config/example/directory.yaml").read_text()
    assert (site / "rules/example.yaml").read_text() == (REPOSITORY / "rules/example.yaml").read_text()
    # The configuration is config/gateway.toml with everything in it, only the two paths moved inside.
    written = tomllib.loads((site / "gateway.toml").read_text())
    original = tomllib.loads((REPOSITORY / "config/gateway.toml").read_text())
    assert written["gateway"].pop("data_dir") == "data"
    assert original["gateway"].pop("data_dir") == "../data"
    assert written["rules"].pop("dir") == "rules"
    assert original["rules"].pop("dir") == "../rules"
    assert written == original
    assert "the repository" not in (site / "gateway.toml").read_text()


def test_the_readme_says_what_to_edit(tmp_path: Path) -> None:
    init(tmp_path / "site")
    readme = (tmp_path / "site" / "README.txt").read_text()
    assert "Edit gateway.toml" in readme
    assert f"gateway --config {tmp_path / 'site' / 'gateway.toml'} config check" in readme


def test_init_never_overwrites(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "gateway.toml").write_text("# mine\n")
    (site / "rules").mkdir()
    code, out, err = init(site)
    assert out == ""
    assert code == 2
    assert err == (
        f"gateway: error: {site} already has gateway.toml, rules; `gateway init` never overwrites: "
        "choose an empty or new directory, or move those away\n"
    )
    assert (site / "gateway.toml").read_text() == "# mine\n"
    assert not (site / "directory.yaml").exists(), "nothing is written when anything is in the way"


def test_init_into_an_existing_empty_directory(tmp_path: Path) -> None:
    code, _, err = init(tmp_path)
    assert code == 0, err
    assert (tmp_path / "gateway.toml").is_file()


def test_init_onto_a_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    code, _, err = init(tmp_path / "plain")
    assert code == 2
    assert f"'{tmp_path / 'plain'}' is a file" in err
