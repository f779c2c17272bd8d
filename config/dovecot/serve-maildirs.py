"""Serve the gateway's Maildirs over IMAP on 127.0.0.1 with Dovecot, for a person's mail client.

    .venv/bin/python config/dovecot/serve-maildirs.py [--config config/gateway.toml] [--port 1143]
                                                      [--password dev] [--run-dir DIR] [--user NAME]

The Maildirs are those of the embedded default (``[mailbox] maildir_root``, by default
``<data_dir>/mail``, laid out as ``<portfolio>/<member address>/``). Every member's Maildir becomes an
IMAP account: the user name is the member's address (``<portfolio>.<address>`` when the address has a
Maildir in more than one portfolio), the password the development password given (default "dev").
Members whose Maildir appears later (their first copy) can log in within two seconds.

Dovecot runs in the foreground as the user who owns the Maildirs (when started as root) or as the
caller; when root owns them (the gateway runs as root, as `make run` does on a fresh machine), they are
given to ``nobody`` (or ``--user``), and each new copy within two seconds, with the settings of config/dovecot/dovecot.conf and its own files under ``--run-dir``
(default ``<maildir_root>/../dovecot-dev``): index and control files live there, so nothing but the
mail itself is shared with the gateway. Flags a client sets are renames in the Maildir, which the
gateway's flag sync reads. Ctrl-C stops it. See docs/imap.md.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

SHIPPED_CONFIG = Path(__file__).resolve().parent / "dovecot.conf"
RESCAN_SECONDS = 2.0
# Who Dovecot runs as when started as root on Maildirs root owns (the gateway ran as root).
TAKE_OVER_USER = "nobody"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, help="gateway config (default: $GATEWAY_CONFIG or config/gateway.toml)"
    )
    parser.add_argument("--port", type=int, default=1143, help="IMAP port on 127.0.0.1 (default 1143)")
    parser.add_argument("--password", default="dev", help='password of every account (default "dev")')
    parser.add_argument(
        "--run-dir", type=Path, help="Dovecot's own files (default <maildir_root>/../dovecot-dev)"
    )
    parser.add_argument("--user", help="run Dovecot as this user (default: the Maildirs' owner, or you)")
    args = parser.parse_args(argv)

    try:
        root = maildir_root(args.config)
        run_dir = (args.run_dir or root.parent / "dovecot-dev").absolute()
        user = run_user(args.user, root)
        for path, what in ((root, "the Maildir root"), (run_dir, "the run directory")):
            if any(char.isspace() or char == ":" for char in str(path)):
                raise SystemExit(
                    f"serve-maildirs: {what} {path} contains a space or ':', which Dovecot's "
                    "passwd-file cannot hold; use --run-dir or another data directory"
                )
        if ":" in args.password or "\n" in args.password:
            raise SystemExit("serve-maildirs: the password must not contain ':' or a line break")
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2

    take_over = os.getuid() == 0 and root.stat().st_uid == 0
    if take_over:
        hand_over(root, user)
        print(
            f"{root} belongs to root (the gateway runs as root) and Dovecot gives no mail access to root: "
            f"the Maildirs are given to {user.pw_name}, and each new copy within {RESCAN_SECONDS:.0f} s; "
            "the gateway, as root, still reads and writes them.",
            flush=True,
        )
    prepare(run_dir, user, args.port)
    accounts = write_users(run_dir, root, args.password, user)
    process = subprocess.Popen(
        ["dovecot", "-F", "-c", str(run_dir / "dovecot.conf")],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # As root: drop to the run user before exec (Dovecot then runs without root, "rootless").
        user=user.pw_uid if os.getuid() == 0 else None,
        group=user.pw_gid if os.getuid() == 0 else None,
        extra_groups=[] if os.getuid() == 0 else None,
    )
    print(
        f"Dovecot serves {root} on imap://127.0.0.1:{args.port} (no TLS; loopback only), "
        f"password {args.password!r}; Ctrl-C stops it.",
        flush=True,
    )
    announce(accounts)

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    next_scan = time.monotonic() + RESCAN_SECONDS
    while not stopping and process.poll() is None:
        time.sleep(0.1)
        if time.monotonic() >= next_scan:
            if take_over:
                hand_over(root, user)
            now = write_users(run_dir, root, args.password, user)
            announce({name: path for name, path in now.items() if name not in accounts})
            accounts = now
            next_scan = time.monotonic() + RESCAN_SECONDS
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return 0 if stopping else (process.returncode or 1)


def maildir_root(config: Path | None) -> Path:
    """``[mailbox] maildir_root`` of the gateway's configuration."""
    try:
        from gateway.config import config_path, load_settings
        from gateway.errors import ConfigError
    except ImportError:
        raise SystemExit("serve-maildirs: run it with the project's Python: .venv/bin/python") from None
    try:
        settings = load_settings(config_path(config, os.environ))
    except ConfigError as exc:
        raise SystemExit(f"serve-maildirs: {exc}") from None
    return settings.mailbox.maildir_root


def run_user(name: str | None, root: Path) -> pwd.struct_passwd:
    """Who Dovecot runs as: Dovecot gives nobody mail access as root, and it must own the run files."""
    if os.getuid() != 0:
        if name is not None and name != pwd.getpwuid(os.getuid()).pw_name:
            raise SystemExit("serve-maildirs: --user needs root")
        return pwd.getpwuid(os.getuid())
    if name is not None:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise SystemExit(f"serve-maildirs: no user {name!r}") from None
    try:
        owner = pwd.getpwuid(root.stat().st_uid)
    except FileNotFoundError:
        raise SystemExit(f"serve-maildirs: {root} does not exist yet: no copy was delivered") from None
    if owner.pw_uid == 0:
        # The gateway runs as root (`make run` on a fresh machine): the Maildirs go to an ordinary user
        # (main() hands them over, and every new copy after them), since Dovecot refuses root.
        return pwd.getpwnam(TAKE_OVER_USER)
    return owner


def hand_over(root: Path, user: pwd.struct_passwd) -> int:
    """Give everything under ``root`` that root owns to ``user``; how many paths changed hands.

    The gateway, running as root, keeps writing new copies as root (mode 0600); Dovecot, running as
    ``user``, could not read them. Root still reads, renames and writes what ``user`` owns, so the
    gateway is not affected.
    """
    changed = 0
    for directory, subdirectories, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, name) for name in (*subdirectories, *files))]:
            try:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, user.pw_uid, user.pw_gid)
                    changed += 1
            except FileNotFoundError:
                continue  # moved by the gateway or a client meanwhile; the next scan finds it
    return changed


def prepare(run_dir: Path, user: pwd.struct_passwd, port: int) -> None:
    """The run directory and its dovecot.conf, which includes the shipped settings."""
    for sub in ("", "state", "index", "control"):
        (run_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    (run_dir / "run").mkdir(mode=0o755, exist_ok=True)  # Dovecot wants its base_dir world-readable
    (run_dir / "state" / "instances.lock").unlink(missing_ok=True)  # left by a master that was killed
    group = grp.getgrgid(user.pw_gid).gr_name
    (run_dir / "dovecot.conf").write_text(
        f"""# Written by config/dovecot/serve-maildirs.py; the shared settings come from the shipped file.
!include {SHIPPED_CONFIG}

base_dir = {run_dir}/run
state_dir = {run_dir}/state
log_path = /dev/stderr
default_internal_user = {user.pw_name}
default_internal_group = {group}
default_login_user = {user.pw_name}

passdb {{
  driver = passwd-file
  args = {run_dir}/users
}}
userdb {{
  driver = passwd-file
  args = {run_dir}/users
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    )
    if os.getuid() == 0:
        for path in [run_dir, *run_dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)


def accounts_in(root: Path) -> dict[str, tuple[str, Path]]:
    """User name -> (portfolio, Maildir) for every member Maildir under ``root``."""
    found: list[tuple[str, str, Path]] = []  # (address, portfolio, Maildir)
    if root.is_dir():
        for portfolio_dir in sorted(root.iterdir()):
            if not portfolio_dir.is_dir() or portfolio_dir.name.startswith("."):
                continue
            for maildir in sorted(portfolio_dir.iterdir()):
                name = maildir.name
                if (maildir / "cur").is_dir() and ":" not in name and not any(c.isspace() for c in name):
                    found.append((name, portfolio_dir.name, maildir))
    addresses = [address for address, _, _ in found]
    accounts: dict[str, tuple[str, Path]] = {}
    for address, portfolio, maildir in found:
        login = address if addresses.count(address) == 1 else f"{portfolio}.{address}"
        accounts[login] = (portfolio, maildir)
    return accounts


def write_users(run_dir: Path, root: Path, password: str, user: pwd.struct_passwd) -> dict[str, Path]:
    """(Re)write the passwd-file when the accounts changed; Dovecot rereads it by itself."""
    accounts = accounts_in(root)
    lines = []
    for name, (portfolio, maildir) in accounts.items():
        private = f"{portfolio}/{maildir.name}"
        home = run_dir / "index" / private
        mail = f"maildir:{maildir}:INDEX={home}:CONTROL={run_dir / 'control' / private}"
        lines.append(f"{name}:{{PLAIN}}{password}::::{home}::userdb_mail={mail}\n")
    text = "".join(lines)
    users = run_dir / "users"
    if not users.exists() or users.read_text() != text:
        temporary = run_dir / "users.tmp"
        temporary.write_text(text)
        temporary.chmod(0o600)
        if os.getuid() == 0:
            os.chown(temporary, user.pw_uid, user.pw_gid)
        temporary.replace(users)
    return {name: maildir for name, (_, maildir) in accounts.items()}


def announce(accounts: dict[str, Path]) -> None:
    for name in sorted(accounts):
        print(f"  account {name}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
