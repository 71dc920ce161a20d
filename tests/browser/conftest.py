"""The browser test reuses the integration harness (tests/integration/
conftest.py): it is loaded here by path, under its own module name, and
everything in it - fixtures (certs, mosquitto, broker, gateway, ...), hooks
and helpers - is re-exported, so `from conftest import wait_until` works in
this folder too."""
import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
_NAME = "fleetgw_integration_conftest"

if _NAME in sys.modules:
    _mod = sys.modules[_NAME]
else:
    _spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _mod
    _spec.loader.exec_module(_mod)

globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("__")})
