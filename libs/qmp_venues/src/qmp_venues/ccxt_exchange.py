"""A ccxt exchange as QMP uses it: a spot account, the exchange's testnet unless live, every API pointed at
another base URL when one is given (a fake exchange on loopback), ccxt's own rate limiting on."""

from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async

# Options an exchange needs to work as a spot account with QMP (merged under the configured ones).
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "defaultType": "spot",
                "warnOnFetchOpenOrdersWithoutSymbol": False, "newOrderRespType": {"market": "FULL"}},
}


def make_exchange(exchange: str, api_key: str = "", secret_key: str = "", sandbox: bool = True, url: str = "",
                  options: dict[str, Any] | None = None, rate_limit_ms: float = 0.0) -> Any:
    """Return the ccxt exchange (async), in sandbox mode unless live, pointed at `url` when given; ValueError
    for an exchange ccxt does not know."""
    try:
        cls = getattr(ccxt_async, exchange)
    except AttributeError as error:
        raise ValueError(f"ccxt knows no exchange {exchange!r} (ccxt.exchanges lists them)") from error
    params: dict[str, Any] = {"enableRateLimit": True,
                              "options": {**EXCHANGE_OPTIONS.get(exchange, {}), **(options or {})}}
    if api_key:
        params |= {"apiKey": api_key, "secret": secret_key}
    if rate_limit_ms > 0:
        params["rateLimit"] = rate_limit_ms
    client = cls(params)
    if sandbox:
        client.set_sandbox_mode(True)  # raises NotSupported for an exchange without a testnet
    if url:
        client.urls["api"] = _rebased(client.urls["api"], url)
    return client


def _rebased(urls: Any, base: str) -> Any:
    """Every API URL of the exchange with its scheme and host replaced by `base` (the paths kept)."""
    if isinstance(urls, dict):
        return {key: _rebased(value, base) for key, value in urls.items()}
    if isinstance(urls, str):
        return base.rstrip("/") + urlsplit(urls).path
    return urls
