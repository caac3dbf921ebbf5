"""A real Dovecot IMAP server for the tests: a child process with its own config in a temporary
folder (passwd-file users, Maildir, 127.0.0.1, a free port), stoppable and restartable on the
same port. Under CI=true a missing Dovecot fails the tests instead of skipping them."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

PASSWORD = "secret"
IN_CI = os.environ.get("CI", "").lower() == "true"
# A server that has neither IDLE nor MOVE, to exercise polling and COPY + EXPUNGE.
PLAIN_CAPABILITIES = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE NAMESPACE UIDPLUS CHILDREN UNSELECT"


def dovecot_binary() -> str:
    found = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
    if found is None:
        message = "Dovecot is required for the IMAP tests (apt-get install dovecot-imapd)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true")
        pytest.skip(message)
    return found


class Dovecot:
    """One server. Run as root, mail is owned by `nobody` (Dovecot refuses uid 0 for mail)."""

    def __init__(self, port: int, users: tuple[str, ...], idle_and_move: bool = True) -> None:
        self.binary = dovecot_binary()
        self.port, self.users = port, users
        self.root = Path(tempfile.mkdtemp(prefix="intake-dovecot-"))
        self.root.chmod(0o755)      # the mail user must reach its Maildir
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config(idle_and_move)

    def _write_config(self, idle_and_move: bool) -> None:
        me = pwd.getpwuid(os.geteuid())
        mail_user = pwd.getpwnam("nobody") if me.pw_uid == 0 else me
        internal, login = ("dovecot", "dovenull") if me.pw_uid == 0 else (me.pw_name, me.pw_name)
        mail = self.root / "mail"
        mail.mkdir()
        os.chown(mail, mail_user.pw_uid, mail_user.pw_gid)
        (self.root / "passwd").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in self.users))
        capability = "" if idle_and_move else f"imap_capability = {PLAIN_CAPABILITIES}\n"
        (self.root / "dovecot.conf").write_text(f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{mail}/%u
{capability}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")

    def start(self, timeout: float = 15) -> None:
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(self.root / "dovecot.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dovecot exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"dovecot did not start: {self.log()}")

    def stop(self) -> None:
        """Like an administrator's restart: the server and every session it serves end now.
        (Signalling the master alone leaves orphaned sessions open for several seconds.)"""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def client(self, user: str | None = None) -> IMAPClient:
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=10)
        client.login(user or self.users[0], PASSWORD)
        return client

    def append(self, raw: bytes, folder: str = "INBOX", user: str | None = None) -> int:
        """Deliver a message; returns its UID."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw)
        return int(response.split(b"APPENDUID ")[1].split(b"]")[0].split()[1])

    def messages(self, folder: str = "INBOX", user: str | None = None) -> dict[int, tuple[bytes, ...]]:
        """UID -> flags of the messages in `folder` (empty when the folder does not exist)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            return {uid: data[b"FLAGS"] for uid, data in client.fetch(uids, ["FLAGS"]).items()} if uids else {}

    def maildir_file(self, marker: bytes, user: str | None = None) -> Path:
        """The file holding the message that contains `marker` (to damage it on disk)."""
        home = self.root / "mail" / (user or self.users[0])
        for path in [*home.glob("cur/*"), *home.glob("new/*")]:
            if marker in path.read_bytes():
                return path
        raise AssertionError(f"no message contains {marker!r}")
