"""Finds base.thrift in a service: the kit's ping, health and errors as that service's IDL has them.

thriftpy2 makes new classes each time an IDL file is loaded, so the kit
raises and catches the exact classes the service's own IDL includes.
Imported by the server and by clients alike (no MySQL here).
"""

import sys
from pathlib import Path
from types import ModuleType

from servicekit.errors import ContractError

BASE_THRIFT = Path(__file__).with_name("base.thrift")
BASE_METHODS = ("ping", "health")


def base_module(service: type) -> ModuleType:
    """The thriftpy2 module of base.thrift as `service`'s IDL includes it."""
    for cls in service.__mro__:
        module = sys.modules.get(cls.__module__)
        thrift_file = getattr(module, "__thrift_file__", None)
        if thrift_file and Path(thrift_file).resolve() == BASE_THRIFT.resolve():
            return module
    raise ContractError(f'service {service.__name__} does not extend base.BaseService of "servicekit/base.thrift"')
