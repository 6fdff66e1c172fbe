"""GuardedProcessor: one decoded request to one handler call and back; errors mapped here.

The engine (thread_pool_server.py) hands it a whole, checked message; it calls the service's handler and writes
the reply or error. `check_contract()` finds at start-up what would otherwise reach a client as INTERNAL_ERROR.
"""

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from time import perf_counter
from typing import Protocol

from thriftpy2.protocol import TCompactProtocol, TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TException, TMessageType, TProcessor, TType

from servicekit.base import BASE_METHODS, base_module
from servicekit.errors import ContractError, KitError
from servicekit.idempotency import METHOD_NAME_MAX, REQUEST_ID_ARGUMENT
from servicekit.wire import Call, MalformedMessage, OffContract, element_type, field_type

INTERNAL_ERROR = TApplicationException(TApplicationException.INTERNAL_ERROR, "internal error")
MAX_ECHOED_NAME = 255  # characters of a method name an error reply repeats (no IDL's name is longer)
CURSOR_ARGUMENT = "cursor"  # paging.py's BadCursor is InvalidArgument
WITHOUT_TEXT = {TType.BOOL, TType.BYTE, TType.I16, TType.I32, TType.I64, TType.DOUBLE, TType.BINARY}
logger = logging.getLogger(__name__)
UNKNOWN_METHOD = {"client_error": "calls of unknown methods"}  # any client can cause it: logging caps the lines
ONE_WAY = {"client_error": "one-way calls"}
ThriftProtocol = TCyBinaryProtocol | TCompactProtocol  # what the engine decodes requests and encodes replies with


def _unexpected(method: str, error: BaseException) -> dict:
    """The log budget's kind for an unexpected error: a database that refuses every query (a table missing)
    fails each request alike, and its tracebacks are capped, but not another bug's, elsewhere."""
    return {"client_error": f"unexpected {type(error).__name__}s in {method}"}


class Observer(Protocol):
    """Told of each request that took at least `threshold` seconds: 0 for every request, or only the slow ones."""

    threshold: float

    def __call__(self, method: str, peer: str, outcome: str, seconds: float, request_id: str | None) -> None: ...


@dataclass(frozen=True)
class _Method:
    """What every request to one method needs, worked out once at start-up."""

    arguments: type  # the thriftpy2 struct of its arguments
    result: type  # and of its result
    values: Callable[[object], tuple]  # an arguments struct's values in declared order
    declared: tuple[type, ...]  # the exceptions it declares
    result_fields: dict[type, str]  # the result field that carries each declared exception
    call: Callable
    writes: bool  # it takes a request_id (idempotency.py)
    may_hold_text: tuple[tuple, ...]  # the thrift_spec entries of its arguments that may contain strings


def _declared(service: type, method: str) -> tuple[type, ...]:
    return tuple(_result_fields(service, method))


def _result_fields(service: type, method: str) -> dict[type, str]:
    result = getattr(service, method + "_result")
    return {spec[2]: spec[1] for _, spec in sorted(result.thrift_spec.items()) if spec[1] != "success"}


def _argument_names(service: type, method: str) -> list[str]:
    """In the order the IDL declares them, as thriftpy2 passes them (whatever their field ids)."""
    return [spec[1] for spec in getattr(service, method + "_args").thrift_spec.values()]


def _values(names: list[str]) -> Callable[[object], tuple]:
    """What reads these attributes, always as a tuple (attrgetter of one name returns the bare value)."""
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda arguments: (one(arguments),)
    return attrgetter(*names) if names else lambda arguments: ()


def _may_hold_text(service: type, method: str) -> tuple[tuple, ...]:
    return tuple(
        spec for spec in getattr(service, method + "_args").thrift_spec.values() if spec[0] not in WITHOUT_TEXT
    )


def _undecoded(kind: int, held: object, value: object) -> bool:
    """Whether `value`, of Thrift type `kind`, holds a string thriftpy2 could not decode (it leaves bytes)."""
    if value is None:
        return False
    if kind == TType.STRING:
        return isinstance(value, bytes)
    if kind == TType.STRUCT:
        return any(_undecoded(*field_type(spec), getattr(value, spec[1])) for spec in held.thrift_spec.values())
    if kind in (TType.LIST, TType.SET):
        return any(_undecoded(*element_type(held), item) for item in value)
    if kind == TType.MAP:
        keys, values = element_type(held[0]), element_type(held[1])
        return any(_undecoded(*keys, key) or _undecoded(*values, item) for key, item in value.items())
    return False


def check_contract(service: type, handler: object) -> None:
    """Raise ContractError naming every rule `service` or `handler` breaks (see base.thrift)."""
    if isinstance(handler, type):  # `NotesHandler` for `NotesHandler()`: else each method "does not take" its arguments
        raise ContractError(
            f"the handler is the class {handler.__name__}, not one of its objects: pass {handler.__name__}()"
        )
    base = base_module(service)
    problems = []
    for method in service.thrift_services:
        if method in BASE_METHODS:
            continue
        if getattr(service, method + "_result").oneway:
            # The engine drops every one-way call (an answer would put its client out of step): the handler
            # would never run. Not "does not declare Unavailable": Thrift's compiler refuses a oneway's throws.
            problems.append(
                f"{method} is oneway, and the kit answers every call (it drops one-way calls):"
                f" make it a void method that declares base.Unavailable"
            )
            continue
        declared = _declared(service, method)
        arguments = _argument_names(service, method)
        function = getattr(handler, method, None)
        if not callable(function):
            problems.append(f"{type(handler).__name__} has no method {method}")
        elif not _takes(function, len(arguments)):
            shown = ", ".join(arguments)
            problems.append(f"{type(handler).__name__}.{method} does not take the IDL's arguments ({shown})")
        needed = [base.Unavailable]
        if CURSOR_ARGUMENT in arguments:
            needed.append(base.InvalidArgument)
        if REQUEST_ID_ARGUMENT in arguments:
            needed += [base.InvalidArgument, base.Conflict]
            if len(method) > METHOD_NAME_MAX:
                problems.append(f"write method {method} has a name longer than {METHOD_NAME_MAX} characters")
        problems += [f"{method} does not declare base.{e.__name__}" for e in dict.fromkeys(needed) if e not in declared]
    if problems:
        raise ContractError("; ".join(problems))


def _takes(function: Callable, count: int) -> bool:
    """Whether `function` can be called with `count` positional arguments, as _answer calls it; True when it has
    no signature to read (a builtin, or C code such as Cython's without `binding`): its first call will tell."""
    try:
        signature = inspect.signature(function)
    except ValueError:
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


class _BaseHandler:
    """ping and health, which every service answers the same way."""

    def __init__(self, health: type, version: str, is_serving: Callable[[], bool], database_answers) -> None:
        self._health, self._version = health, version
        self._is_serving, self._database_answers = is_serving, database_answers

    def ping(self) -> str:
        return "pong"

    def health(self):
        return self._health(serving=self._is_serving(), database=self._database_answers(), version=self._version)


class GuardedProcessor(TProcessor):
    """A TProcessor for `service` that calls `handler` and maps every error.

    It answers ping and health itself, calls the service's handler for the
    rest, and is the one place errors are mapped: a KitError (a database
    outage, a bad or reused request_id) becomes the exception of that name in
    base.thrift; an exception the method does not declare, or a result of a
    type the IDL does not allow, becomes INTERNAL_ERROR with one logged
    traceback, and the connection stays usable. A TMultiplexedProtocol
    client's "Notes:ping" is served as ping; a one-way call is dropped (the
    kit serves none). A reply sent to the server is a malformed message, for
    the engine to close the connection; a string argument that is not UTF-8
    (thriftpy2 would hand the handler bytes) is off the contract
    (wire.OffContract), which the engine answers with PROTOCOL_ERROR.
    """

    def __init__(
        self,
        service: type,
        handler: object,
        *,
        version: str,
        is_serving: Callable[[], bool],
        database_answers: Callable[[], bool],
        observe: Observer | None = None,
    ) -> None:
        check_contract(service, handler)
        super().__init__(service, handler)
        self.observe = observe
        self._observe_from = observe.threshold if observe else math.inf  # a comparison per call, not a call
        self._base = base_module(service)
        self._service = service.__name__
        self._multiplexed = service.__name__ + ":"  # TMultiplexedProtocol's prefix, when the name is the IDL's
        base_handler = _BaseHandler(self._base.Health, version, is_serving, database_answers)
        self._methods = {
            name: _Method(
                getattr(service, name + "_args"),
                getattr(service, name + "_result"),
                _values(_argument_names(service, name)),
                _declared(service, name),
                _result_fields(service, name),
                getattr(base_handler if name in BASE_METHODS else handler, name),
                REQUEST_ID_ARGUMENT in _argument_names(service, name),
                _may_hold_text(service, name),
            )
            for name in service.thrift_services
        }

    def send_exception(self, oprot: ThriftProtocol, api: str, exc: TApplicationException, seqid: int) -> None:
        """TProcessor's, repeating at most MAX_ECHOED_NAME characters of the method name: a client that sent
        64 KiB of one, and does not read, would have the kernel hold them again."""
        super().send_exception(oprot, api[:MAX_ECHOED_NAME], exc, seqid)

    def process(self, iprot: ThriftProtocol, oprot: ThriftProtocol, peer: str = "") -> None:
        """Read one call from `iprot`, run it, write the reply (or error) to `oprot`; `peer` is for the logs."""
        name, message_type, seqid = iprot.read_message_begin()
        method = self._methods.get(name)
        if method is None or message_type != TMessageType.CALL:  # one test on a call's path for what is rare
            name, method = self._uncommon(iprot, oprot, name, message_type, seqid, peer)
            if method is None:
                return
        arguments = method.arguments()
        iprot.read_struct(arguments)
        iprot.read_message_end()
        for spec in method.may_hold_text:
            if _undecoded(*field_type(spec), getattr(arguments, spec[1])):
                raise OffContract(
                    f"argument {spec[1]!r} of {name} holds a string that is not UTF-8", Call(name, seqid, False)
                )
        started = perf_counter()
        outcome = self._answer(method, name, arguments, oprot, seqid)
        if (seconds := perf_counter() - started) >= self._observe_from:
            request_id = getattr(arguments, REQUEST_ID_ARGUMENT) if method.writes else None
            self.observe(name, peer, outcome, seconds, request_id)

    def _uncommon(
        self, iprot: ThriftProtocol, oprot: ThriftProtocol, name: str | bytes, message_type: int, seqid: int, peer: str
    ) -> tuple[str | bytes, _Method | None]:
        """A message that is not a call of a method by its name: the name and method to serve it as, or the
        method None once it is dealt with here. Raises MalformedMessage for a reply sent to the server."""
        name = self.method_name(name)
        method = self._methods.get(name)
        if message_type == TMessageType.ONEWAY or (method is None and message_type == TMessageType.CALL):
            self._skip(iprot, oprot, name, message_type, seqid, peer)
            return name, None
        if message_type != TMessageType.CALL:  # a reply or an exception
            raise MalformedMessage(f"{name!r} is a message of type {message_type}, not a call")
        return name, method

    def method_name(self, name: str | bytes) -> str | bytes:
        """The method a call named `name` is for, the name its reply carries: `ping` for TMultiplexedProtocol's
        "Notes:ping" (as Apache's TMultiplexedProcessor answers), when the IDL has that method; else `name`."""
        if (
            isinstance(name, str)
            and name.startswith(self._multiplexed)
            and name[len(self._multiplexed) :] in self._methods
        ):
            return name[len(self._multiplexed) :]
        return name

    def _skip(
        self, iprot: ThriftProtocol, oprot: ThriftProtocol, name: str | bytes, message_type: int, seqid: int, peer: str
    ) -> None:
        """Read past a call no method answers: a call of a method the IDL does not declare gets UNKNOWN_METHOD; a
        one-way call (the kit serves none) is dropped, as its client reads no reply. The connection stays in step."""
        if isinstance(name, bytes):  # not UTF-8, so thriftpy2 left it undecoded: text for logs and metrics
            name = name.decode("utf-8", "backslashreplace")
        iprot.skip(TType.STRUCT)
        iprot.read_message_end()
        if message_type == TMessageType.ONEWAY:
            logger.warning(
                "one-way call from %s of %r dropped: %s answers every call", peer, name, self._service, extra=ONE_WAY
            )
            outcome = "one_way_dropped"
        else:
            # The peer before the client's name: a long line is cut at its end.
            logger.warning("call from %s of unknown method %r", peer, name, extra=UNKNOWN_METHOD)
            unknown = f"unknown method {name[:MAX_ECHOED_NAME]!r} of {self._service}"
            self.send_exception(
                oprot, name, TApplicationException(TApplicationException.UNKNOWN_METHOD, unknown), seqid
            )
            outcome = "unknown_method"
        if self.observe:
            self.observe(name, peer, outcome, 0.0, None)

    def _answer(self, method: _Method, name: str, arguments: object, oprot: ThriftProtocol, seqid: int) -> str:
        """Call the handler and write its result or declared error: the outcome, for the logs and metrics.

        (No oneway methods: check_contract refuses them.)
        """
        result = method.result()
        try:
            result.success = method.call(*method.values(arguments))
            outcome = "ok"
        except Exception as error:  # noqa: BLE001 - every error becomes a reply; the unexpected are logged
            reply = self._declared_error(method, name, error)
            if reply is None:
                self.send_exception(oprot, name, INTERNAL_ERROR, seqid)
                return "internal_error"
            outcome = type(reply).__name__
            setattr(result, method.result_fields[next(e for e in method.declared if isinstance(reply, e))], reply)
        try:
            oprot.write_message_begin(name, TMessageType.REPLY, seqid)
            oprot.write_struct(result)
            oprot.write_message_end()  # the engine takes the reply from oprot's buffer: no flush
        except Exception as error:  # a value of the wrong type, found only when encoded
            logger.exception(
                "%s returned a result service.thrift does not allow: sent as INTERNAL_ERROR",
                name,
                extra=_unexpected(name, error),
            )
            oprot.trans.clean()  # the part written before it failed
            self.send_exception(oprot, name, INTERNAL_ERROR, seqid)
            return "internal_error"
        return outcome

    def _declared_error(self, method: _Method, name: str, error: Exception) -> TException | None:
        """The declared exception to reply with: `error` itself, or a KitError's
        base.thrift exception; None (and the traceback logged) for anything else."""
        if isinstance(error, KitError):
            error = getattr(self._base, error.thrift_name)(**error.fields)
        if isinstance(error, method.declared):
            return error
        self._log_unexpected(name, error)
        return None

    def _log_unexpected(self, method: str, error: Exception) -> None:
        if isinstance(error, TException):  # an IDL exception, but not one this method declares
            logger.error(
                "%s raised %s, which service.thrift does not declare for %s: sent as INTERNAL_ERROR",
                method,
                type(error).__name__,
                method,
                exc_info=error,
                extra=_unexpected(method, error),
            )
        else:
            logger.exception("unexpected error in %s", method, extra=_unexpected(method, error))

    @property
    def argument_specs(self) -> dict[str, dict]:
        """The thrift_spec of each method's arguments, by method name."""
        return {name: method.arguments.thrift_spec for name, method in self._methods.items()}

    @property
    def call_specs(self) -> dict[str, dict]:
        """argument_specs, also by each name as a TMultiplexedProtocol client sends it ("Notes:ping")."""
        specs = self.argument_specs
        return specs | {self._multiplexed + name: spec for name, spec in specs.items()}
