"""Key store ``pkcs11``: the HE secret key sealed inside a PKCS#11 token (SoftHSM2, an HSM).

Each engine gets its own AES-256 key-encryption key (KEK) in the token, created SENSITIVE
and not EXTRACTABLE, so its value never leaves the token. The HE secret key blob is sealed
and opened with CKM_AES_GCM inside the token, with the engine id and key id bound
as associated data; the sealed blob lives beside the engine as ``secret-key.p11.json``.

Module path, token label and PIN come from the profile or the environment
(``FRIP_PKCS11_MODULE``, ``FRIP_PKCS11_TOKEN``, ``FRIP_PKCS11_PIN``), or the PIN from a
prompt on a terminal: never from the command line.

Several processes share one token (a service and CLI commands, two services), so every
operation is built like a production HSM client's:

- one process-wide lock guards every call (SoftHSM is not thread-safe under
  python-pkcs11), and a process forked after the library was loaded refuses to use it
  (start workers with spawn or forkserver);
- an engine lock file beside the sealed file (``secret-key.p11.json.lock``, fcntl): KEK
  rotation and every change of the sealed file hold it exclusively, unwraps hold it
  shared, so a reader waits for a rotation instead of failing, and a waiting rotation
  holds off new readers;
- a token-store lock file (``.frip-pkcs11.lock`` in SoftHSM's token directory, or in
  ``lock_dir`` / ``$FRIP_PKCS11_LOCK_DIR``) serialises frip processes inside the token:
  SoftHSM's file store rewrites ``token.object`` at every login, and a process that reads
  it half-written loses the token until the library is initialised again;
- transient token errors (stale handles, a token or key missing from a stale cache,
  SoftHSM's CKR_GENERAL_ERROR) are retried a bounded number of times with backoff, after
  finalising and re-initialising the library, which re-reads the token directory;
- every PKCS#11 error reaches the caller as a KeyStoreError saying what to do.
"""

from __future__ import annotations

import base64
import fcntl
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from frip_engine.contracts import KeyStore, Register, Requirement
from frip_engine.errors import KeyStoreError, KeyStoreUnavailableError
from frip_engine.hookspecs import hookimpl
from frip_engine.private import engine_file
from frip_plugins.key_stores._sealed_file import read_sealed, secret_input, write_sealed

FORMAT = "frip-pkcs11-keystore-1"
DEFAULT_FILE = "secret-key.p11.json"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
STORE_LOCK = ".frip-pkcs11.lock"
SOFTHSM_CONFIGS = ("~/.config/softhsm2/softhsm2.conf", "/etc/softhsm/softhsm2.conf")
ATTEMPTS = 8  # tries of one operation; the waits between them double from FIRST_WAIT
FIRST_WAIT = 0.05  # seconds, up to LAST_WAIT: 8 attempts wait about 3.5 s in all
LAST_WAIT = 1.0
LOCK_TIMEOUT = 120.0  # seconds to wait for another process's rotation before giving up
_LOCK = threading.RLock()
_LIBRARIES: dict[str, Any] = {}
_STATE = {"loaded_in_pid": 0}
RETRIES: dict[str, int] = {}  # transient errors met in this process, by message (benchmarks)
T = TypeVar("T")


def _aad(engine_id: str, key_id: str) -> bytes:
    return f"frip-engine:{engine_id}:{key_id}".encode()


def _kek_prefix(engine_id: str) -> str:
    return f"frip-kek-{engine_id}-"


class _Transient(Exception):
    """A token error that another attempt, after re-initialising the library, may not see.

    ``message`` is what the caller is told if every attempt fails this way; ``lasting``:
    then the cause is in the keys or the configuration (a KeyStoreError), not a busy or
    flaky token (a KeyStoreUnavailableError: retry later).
    """

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.message, self.lasting = message, lasting


def _transient_errors() -> tuple[type[Exception], ...]:
    """PKCS#11 errors that a stale library state or a concurrent process can cause."""
    import pkcs11

    return (
        pkcs11.GeneralError,
        pkcs11.FunctionFailed,
        pkcs11.DeviceError,
        pkcs11.DeviceRemoved,
        pkcs11.TokenNotPresent,
        pkcs11.TokenNotRecognised,
        pkcs11.SlotIDInvalid,
        pkcs11.SessionHandleInvalid,
        pkcs11.SessionClosed,
        pkcs11.ObjectHandleInvalid,
        pkcs11.KeyHandleInvalid,
        pkcs11.UserNotLoggedIn,
        pkcs11.UserPinNotInitialized,  # SoftHSM read token.object while it was rewritten
    )


def _name(exc: BaseException) -> str:
    return type(exc).__name__ + (f" ({exc})" if str(exc) else "")


# ---------------------------------------------------------------------- library and locks
def _library(module: str) -> Any:
    import pkcs11

    if _STATE["loaded_in_pid"] and _STATE["loaded_in_pid"] != os.getpid():
        raise KeyStoreError(
            "the PKCS#11 library was loaded before this process was forked; start worker "
            "processes with the 'spawn' or 'forkserver' method"
        )
    if module not in _LIBRARIES:
        if not Path(module).is_file():
            raise KeyStoreError(f"PKCS#11 module {module} does not exist (set FRIP_PKCS11_MODULE)")
        try:
            _LIBRARIES[module] = pkcs11.lib(module)
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {module}: {_name(exc)}") from exc
        _STATE["loaded_in_pid"] = os.getpid()
    return _LIBRARIES[module]


def _reinitialise(module: str) -> None:
    """C_Finalize then C_Initialize: every session closes and the token list is read again.

    SoftHSM reads its token directory and caches each token's state per C_Initialize;
    a token it once read half-written stays invalid in this process until this runs.
    """
    import pkcs11

    library = _LIBRARIES.get(module)
    if library is None:
        return
    try:
        library.reinitialize()
    except pkcs11.PKCS11Error:  # the next attempt loads the module afresh
        _LIBRARIES.pop(module, None)
        pkcs11.unload(module)


def softhsm_token_dir(module: str) -> Path | None:
    """SoftHSM2's token directory for ``module``, from its configuration file; else None.

    The configuration is found the way SoftHSM finds it: ``$SOFTHSM2_CONF``, then
    ``~/.config/softhsm2/softhsm2.conf``, then ``/etc/softhsm/softhsm2.conf``.
    """
    if "softhsm" not in Path(module).name.lower():
        return None
    candidates = [os.environ.get("SOFTHSM2_CONF", ""), *SOFTHSM_CONFIGS]
    for candidate in candidates:
        conf = Path(candidate).expanduser() if candidate else None
        if conf is None or not conf.is_file():
            continue
        try:
            text = conf.read_text(errors="replace")
        except OSError:  # SoftHSM cannot read it either, and will say so
            return None
        for line in text.splitlines():
            name, _, value = line.split("#", 1)[0].partition("=")
            if name.strip() == "directories.tokendir" and value.strip():
                return Path(value.strip())
        return None
    return None


def softhsm_store_problems(module: str) -> list[str]:
    """What a killed write left in SoftHSM's file object store for ``module`` (empty: none
    seen, or not SoftHSM): per token folder, an empty ``token.object`` (the token reads as
    not initialised: every key in it is lost) or other ``*.object`` files of 0 bytes (the
    objects in them are lost). SoftHSM rewrites these files in place, so a ``kill -9`` or
    a crash mid-write leaves them so; its ``db`` backend (sqlite) does not."""
    folder = softhsm_token_dir(module)
    if folder is None or not folder.is_dir():
        return []
    restore = (
        "restore the token folder from the backup taken with the gallery (stop every frip "
        "process first), then check with `frip keys status`; in production use SoftHSM's "
        "objectstore.backend = db (README, PKCS#11)"
    )
    problems = []
    for token in sorted(p for p in folder.iterdir() if p.is_dir()):
        empty = sorted(p.name for p in token.glob("*.object") if p.stat().st_size == 0)
        if "token.object" in empty:
            problems.append(
                f"SoftHSM token folder {token}: token.object is empty (0 bytes), a write "
                f"killed midway: the token reads as not initialised and its keys are lost; "
                f"{restore}"
            )
        lost = [name for name in empty if name != "token.object"]
        if lost:
            problems.append(
                f"SoftHSM token folder {token}: {len(lost)} object file(s) of 0 bytes "
                f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}), left by a write "
                "killed midway (keys init, rotate-kek): the keys in them are lost; if no other "
                "problem is reported the engine's own key is whole and they are leftovers, to "
                f"move out of the folder while no process uses the token; otherwise {restore}"
            )
    return problems


class FileLock:
    """A reader-writer lock between processes: fcntl locks on two bytes of one file.

    Byte 0 is a turnstile: a writer holds it while waiting for the lock proper (byte 1),
    so readers that come after it wait instead of starving it. Waits are bounded by
    ``timeout`` seconds (then a KeyStoreUnavailableError naming ``what``). fcntl locks
    belong to the process and vanish with it: a killed process never leaves a stale lock.
    Use under ``_LOCK``: threads of one process do not exclude each other with fcntl.
    """

    def __init__(self, path: Path, what: str, timeout: float = LOCK_TIMEOUT) -> None:
        self.path, self.what, self.timeout = path, what, timeout

    @contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot open the lock file {self.path} ({exc.strerror}): every process "
                "using this key store must be able to write there (or set lock_dir / "
                "FRIP_PKCS11_LOCK_DIR for the token-store lock)"
            ) from exc
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            self._acquire(fd, mode, 0)  # the turnstile
            try:
                self._acquire(fd, mode, 1)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _acquire(self, fd: int, mode: int, byte: int) -> None:
        deadline = time.monotonic() + self.timeout
        wait = 0.002
        while True:
            try:
                fcntl.lockf(fd, mode | fcntl.LOCK_NB, 1, byte)
                return
            except OSError:  # EAGAIN/EACCES: another process holds it
                if time.monotonic() >= deadline:
                    raise KeyStoreUnavailableError(
                        f"{self.what} has been locked by another process for over "
                        f"{self.timeout:.0f} s ({self.path}): a key rotation may be stuck; "
                        "find the process holding it (fuser) and let it finish or stop it"
                    ) from None
                time.sleep(wait)
                wait = min(wait * 2, 0.05)


class PKCS11KeyStore:
    name = "pkcs11"

    def __init__(
        self,
        module: str | None = None,
        token_label: str | None = None,
        pin_env: str = "FRIP_PKCS11_PIN",
        path: str | None = None,
        lock_dir: str | None = None,
    ) -> None:
        self.module = module or os.environ.get("FRIP_PKCS11_MODULE") or DEFAULT_MODULE
        self.token_label = token_label or os.environ.get("FRIP_PKCS11_TOKEN") or ""
        self.pin_env = pin_env
        self._placed = path  # bind() resolves it against the engine folder
        self.path = Path(path) if path else None  # as given until bound
        self.lock_dir = lock_dir or os.environ.get("FRIP_PKCS11_LOCK_DIR") or None

    def bind(self, engine_dir: str) -> None:
        self.path = engine_file(self._placed, engine_dir, DEFAULT_FILE, "[key_store] path")

    def describe(self) -> str:
        return (
            f"pkcs11 token '{self.token_label}' via {self.module} (AES-256-GCM in the token); "
            f"wrapped keys in {self.path}"
        )

    # ------------------------------------------------------------------ token access
    def _pin(self) -> str:
        return secret_input(self.pin_env, f"PIN for token '{self.token_label}': ", "token PIN")

    def _engine_lock(self) -> FileLock:
        assert self.path is not None, "bind() first"
        return FileLock(self.path.with_name(self.path.name + ".lock"), f"the key file {self.path}")

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Hold the token-store lock, where there is one (SoftHSM, or a lock_dir)."""
        folder = Path(self.lock_dir) if self.lock_dir else softhsm_token_dir(self.module)
        if folder is None:
            yield
            return
        with FileLock(folder / STORE_LOCK, f"the token store {folder}").hold(exclusive=True):
            yield

    def _run(self, what: str, operation: Callable[[Any], T], *, exclusive: bool) -> T:
        """Run ``operation(session)`` under the locks, retrying transient token errors.

        ``exclusive``: the operation changes the sealed file or the token's keys (else it
        only reads them). Raises KeyStoreError for every failure, PKCS#11 ones included.
        """
        import pkcs11

        if not self.token_label:
            raise KeyStoreError("no PKCS#11 token label: set token_label or FRIP_PKCS11_TOKEN")
        pin = self._pin()
        wait = FIRST_WAIT
        with _LOCK, self._engine_lock().hold(exclusive):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with self._store_lock(), self._session(pin) as session:
                        return operation(session)
                except _Transient as exc:
                    RETRIES[exc.message] = RETRIES.get(exc.message, 0) + 1
                    if attempt == ATTEMPTS:
                        error = KeyStoreError if exc.lasting else KeyStoreUnavailableError
                        raise error(
                            f"{exc.message} (token '{self.token_label}', {what}, "
                            f"{ATTEMPTS} attempts)"
                        ) from None
                except pkcs11.PKCS11Error as exc:  # none is transient: say what it means
                    raise KeyStoreError(self._advice(what, exc)) from None
                with self._store_lock():
                    _reinitialise(self.module)
                time.sleep(wait * random.uniform(0.5, 1.5))
                wait = min(wait * 2, LAST_WAIT)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _session(self, pin: str) -> Iterator[Any]:
        """An open, logged-in read-write session on the token; transient errors marked."""
        import pkcs11

        transient = _transient_errors()
        lib = _library(self.module)
        try:
            tokens = list(lib.get_tokens(token_label=self.token_label))
        except pkcs11.PKCS11Error as exc:
            raise _Transient(f"cannot list PKCS#11 tokens: {_name(exc)}") from exc
        if not tokens:
            raise _Transient(
                f"no PKCS#11 token labelled '{self.token_label}' in {self.module}: check the "
                "label (softhsm2-util --show-slots lists the tokens), SOFTHSM2_CONF, and "
                "token_label or FRIP_PKCS11_TOKEN",
                lasting=True,
            )
        if len(tokens) > 1:
            raise KeyStoreError(
                f"{len(tokens)} tokens are labelled '{self.token_label}'; labels must be "
                "unique (softhsm2-util --init-token twice makes a second one)"
            )
        try:
            session = tokens[0].open(user_pin=pin, rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid):
            raise KeyStoreError(f"wrong PIN for token '{self.token_label}'") from None
        except transient as exc:
            raise _Transient(f"cannot open a session on the token: {_name(exc)}") from exc
        try:
            yield session
        except transient as exc:
            raise _Transient(f"the token failed: {_name(exc)}") from exc
        finally:
            with suppress(pkcs11.PKCS11Error):  # a stale session: the next attempt starts over
                session.close()

    @staticmethod
    def _advice(what: str, exc: BaseException) -> str:
        import pkcs11

        name = _name(exc)
        if isinstance(exc, pkcs11.PinLocked):
            return f"the token's user PIN is locked ({what}): unlock it with the SO PIN"
        if isinstance(exc, pkcs11.PinExpired):
            return f"the token's user PIN has expired ({what}): set a new one"
        if isinstance(exc, pkcs11.TokenWriteProtected):
            return f"the token is write-protected ({what}): it cannot store a new key"
        if isinstance(exc, (pkcs11.DeviceMemory, pkcs11.HostMemory)):
            return f"the token or this host ran out of memory ({what}): {name}"
        if isinstance(exc, (pkcs11.MechanismInvalid, pkcs11.MechanismParamInvalid)):
            return f"the token does not support AES-256-GCM ({what}): {name}; use another token"
        return f"the PKCS#11 token refused {what}: {name}"

    def _kek(self, session: Any, label: str, engine_id: str) -> Any:
        import pkcs11
        from pkcs11 import KeyType, ObjectClass

        try:
            return session.get_key(
                label=label, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
            )
        except pkcs11.NoSuchKey:
            others = sorted(set(self._kek_labels(session, engine_id)) - {label})
        except pkcs11.MultipleObjectsReturned:
            raise KeyStoreError(f"token '{self.token_label}' has several keys '{label}'") from None
        if others:
            advice = (
                f"the token holds this engine's {', '.join(others)} instead: {self.path} and "
                "the token are from different times (one restored from an older backup); "
                "restore the matching copy of the other"
            )
        else:
            advice = (
                "the token holds no key of this engine: it is another token, or it was "
                "re-initialised; point the engine at the token that holds the key "
                "(token_label) or restore the token from its backup"
            )
        raise _Transient(
            f"key '{label}' is not on token '{self.token_label}': {advice}", lasting=True
        )

    @staticmethod
    def _kek_labels(session: Any, engine_id: str) -> list[str]:
        """The labels of every KEK of this engine on the token."""
        from pkcs11 import Attribute, ObjectClass

        labels = []
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            label = str(key[Attribute.LABEL])
            if label.startswith(_kek_prefix(engine_id)):
                labels.append(label)
        return labels

    def _new_kek(self, session: Any, engine_id: str, after: int) -> tuple[Any, str, int]:
        """A fresh KEK whose generation is above ``after`` and every one on the token.

        A key left by an interrupted init or rotation is skipped, never reused.
        """
        from pkcs11 import Attribute, KeyType

        generations = [after]
        for label in self._kek_labels(session, engine_id):
            tail = label.removeprefix(_kek_prefix(engine_id))
            generations += [int(tail)] if tail.isdigit() else []
        generation = max(generations) + 1
        label = f"{_kek_prefix(engine_id)}{generation}"
        template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
        }
        kek = session.generate_key(KeyType.AES, 256, label=label, store=True, template=template)
        return kek, label, generation

    # ------------------------------------------------------------------ sealed blobs
    def _read(self) -> dict[str, Any]:
        assert self.path is not None, "bind() first"
        return read_sealed(self.path, FORMAT, {"kek_label": "", "kek_generation": 0, "keys": {}})

    def _write(self, data: dict[str, Any]) -> None:
        assert self.path is not None, "bind() first"
        write_sealed(self.path, data)

    @staticmethod
    def _seal(kek: Any, engine_id: str, key_id: str, secret: bytes | bytearray) -> dict[str, str]:
        from pkcs11 import GCMParams, Mechanism

        nonce = os.urandom(12)
        sealed = kek.encrypt(
            bytes(secret),
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(nonce, _aad(engine_id, key_id), 128),
        )
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }

    def _open(self, kek: Any, engine_id: str, key_id: str, entry: dict[str, str]) -> bytearray:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        try:
            nonce = base64.b64decode(entry["nonce"])
            sealed = base64.b64decode(entry["sealed"])
        except (KeyError, ValueError) as exc:
            raise KeyStoreError(f"{self.path} is damaged: {exc}") from exc
        refused = (
            f"the token refused to unwrap key '{key_id}' from {self.path}: AES-GCM "
            "authentication failed (the sealed key was altered or belongs to another engine)"
        )
        try:
            return bytearray(
                kek.decrypt(
                    sealed,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, _aad(engine_id, key_id), 128),
                )
            )
        except (pkcs11.EncryptedDataInvalid, pkcs11.EncryptedDataLenRange, pkcs11.DataInvalid):
            raise KeyStoreError(refused) from None
        except pkcs11.GeneralError:  # SoftHSM's answer to a bad tag, and to a stale token
            raise _Transient(refused, lasting=True) from None

    # ------------------------------------------------------------------ contract
    def init(self, engine_id: str) -> None:
        def make(session: Any) -> None:
            data = self._read()
            if data["kek_label"]:
                raise KeyStoreError(f"engine {engine_id} already has key '{data['kek_label']}'")
            _, label, generation = self._new_kek(session, engine_id, 0)
            data.update(kek_label=label, kek_generation=generation, token_label=self.token_label)
            self._write(data)

        self._run("creating the engine's key", make, exclusive=True)

    def store_secret(self, engine_id: str, key_id: str, secret: bytes | bytearray) -> None:
        def seal(session: Any) -> None:
            data = self._read()
            if not data["kek_label"]:
                raise KeyStoreError(f"engine {engine_id} has no key on the token: run init first")
            if key_id in data["keys"]:
                raise KeyStoreError(f"key '{key_id}' already exists in {self.path}")
            kek = self._kek(session, data["kek_label"], engine_id)
            data["keys"][key_id] = self._seal(kek, engine_id, key_id, secret)
            self._write(data)

        self._run(f"sealing key '{key_id}'", seal, exclusive=True)

    def load_secret(self, engine_id: str, key_id: str) -> bytearray:
        def unwrap(session: Any) -> bytearray:
            data = self._read()
            entry = data["keys"].get(key_id)
            if entry is None:
                raise KeyStoreError(f"key '{key_id}' is not in {self.path}")
            kek = self._kek(session, data["kek_label"], engine_id)
            return self._open(kek, engine_id, key_id, entry)

        return self._run(f"unwrapping key '{key_id}'", unwrap, exclusive=False)

    def delete_secret(self, engine_id: str, key_id: str) -> None:
        with _LOCK, self._engine_lock().hold(exclusive=True):
            data = self._read()
            data["keys"].pop(key_id, None)
            self._write(data)

    def rotate_kek(self, engine_id: str) -> str:
        """Re-wrap every stored key under a fresh token key, then destroy the retired one.

        Only the one key this sealed file named is destroyed, and only when no other
        sealed file this store can see (the same file name in the engine folders beside
        this one, on the same token) still names it: two folders with one engine id (a
        copied folder, a restored backup beside its original) share their KEK. Other keys
        with this engine's label are never destroyed: one named by another holder, or
        left by an interrupted init or rotation (a fresh key's generation skips them).
        Holds the engine lock throughout: other processes' unwraps wait, then use the new
        key. An attempt retried after the switch only finishes the clean-up.
        """
        switched: list[tuple[str, str]] = []  # (the new key's label, the retired one's)

        def rotate(session: Any) -> str:
            if not switched:
                data = self._read()
                retired = str(data["kek_label"])
                old = self._kek(session, retired, engine_id)
                new, label, generation = self._new_kek(
                    session, engine_id, int(data["kek_generation"])
                )
                rewrapped = {}
                for key_id, entry in data["keys"].items():
                    secret = self._open(old, engine_id, key_id, entry)
                    try:
                        rewrapped[key_id] = self._seal(new, engine_id, key_id, secret)
                    finally:
                        secret[:] = bytes(len(secret))
                data.update(kek_label=label, kek_generation=generation, keys=rewrapped)
                self._write(data)  # the switch: from here on the new key is the one in use
                switched.append((label, retired))
            label, retired = switched[0]
            if retired not in self._keks_named_beside():
                self._destroy_kek(session, retired)
            return label

        return self._run("rotating the key-encryption key", rotate, exclusive=True)

    def _keks_named_beside(self) -> set[str]:
        """The KEK labels that the other sealed files in the folders beside this one's
        name on this token. One that cannot be read names nothing it can tell."""
        assert self.path is not None, "bind() first"
        named = set()
        for other in self.path.parent.parent.glob(f"*/{self.path.name}"):
            if other.resolve() == self.path.resolve():
                continue
            with suppress(KeyStoreError):
                data = read_sealed(other, FORMAT, {"kek_label": ""})
                if data.get("token_label", self.token_label) == self.token_label:
                    named.add(str(data["kek_label"]))
        return named

    @staticmethod
    def _destroy_kek(session: Any, label: str) -> None:
        """Destroy the one secret key labelled ``label``; none (an earlier attempt destroyed
        it) or several (not this store's making: it cannot tell which) are left alone."""
        import pkcs11
        from pkcs11 import ObjectClass

        with suppress(pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned):
            session.get_key(label=label, object_class=ObjectClass.SECRET_KEY).destroy()

    def status(self, engine_id: str) -> dict[str, Any]:
        """The token, the KEK's label and protection, the sealed key ids, under
        ``kek_leftovers`` the labels of this engine's other keys on the token that no sealed
        file in the folders beside names (left by an interrupted init or rotation, or by a
        copy of the engine moved away: never destroyed here), and under ``problems`` the
        damage in SoftHSM's token store (:func:`softhsm_store_problems`). Raises
        KeyStoreError when the token or the key cannot be read (with that damage)."""
        from pkcs11 import Attribute

        def look(session: Any) -> tuple[dict[str, Any], bool, bool, list[str]]:
            sealed = self._read()
            kek = self._kek(session, sealed["kek_label"], engine_id)
            named = {sealed["kek_label"], *self._keks_named_beside()}
            leftovers = sorted(set(self._kek_labels(session, engine_id)) - named)
            return (
                sealed,
                bool(kek[Attribute.SENSITIVE]),
                bool(kek[Attribute.EXTRACTABLE]),
                leftovers,
            )

        problems = softhsm_store_problems(self.module)
        try:
            sealed, sensitive, extractable, leftovers = self._run(
                "reading the key's status", look, exclusive=False
            )
        except KeyStoreError as exc:
            if not problems:
                raise
            raise KeyStoreError(f"{'; '.join(problems)}. Then: {exc}") from None
        return {
            "problems": problems,
            "store": "pkcs11",
            "module": self.module,
            "token": self.token_label,
            "kek_label": sealed["kek_label"],
            "kek_sensitive": sensitive,
            "kek_extractable": extractable,
            "kek_leftovers": leftovers,  # this engine's keys no visible sealed file names
            "sealed_keys": sorted(sealed["keys"]),
            "sealed_file": str(self.path),
        }


@hookimpl
def register_key_stores(register: Register[KeyStore]) -> None:
    register(
        "pkcs11",
        PKCS11KeyStore,
        summary="PKCS#11 token (SoftHSM2 or an HSM): AES-256-GCM inside the token",
        requires=(Requirement("pkcs11", "python-pkcs11"),),
    )
