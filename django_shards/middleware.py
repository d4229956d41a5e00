"""``PinningMiddleware``: read-your-writes across requests, carried by a signed cookie."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core import signing
from django.http import HttpRequest, HttpResponse

from django_shards import context
from django_shards.conf import get_config

COOKIE_NAME = "django_shards_pins"
_SALT = "django_shards.pins"


def _pins_from_cookie(request: HttpRequest) -> dict[str, tuple[float, str | None]]:
    raw = request.COOKIES.get(COOKIE_NAME)
    if not raw:
        return {}
    try:
        data = signing.loads(raw, salt=_SALT)
    except signing.BadSignature:
        return {}
    now = time.time()
    limit = now + get_config().pin_after_write_seconds
    pins = {}
    for alias, entry in dict(data).items():
        expiry, gtid = (entry if isinstance(entry, list) else (entry, None))[:2]
        if isinstance(expiry, int | float) and expiry > now:
            pins[str(alias)] = (min(float(expiry), limit), gtid)
    return pins


def _store(response: HttpResponse, request: HttpRequest) -> None:
    pins = context.current_pins()
    if pins:
        ttl = max(pins.values())[0] - time.time()
        value = signing.dumps({a: [e, g] for a, (e, g) in pins.items()}, salt=_SALT)
        response.set_cookie(
            COOKIE_NAME, value, max_age=max(1, int(ttl + 1)), httponly=True, samesite="Lax"
        )
    elif COOKIE_NAME in request.COOKIES:
        response.delete_cookie(COOKIE_NAME, samesite="Lax")


class PinningMiddleware:
    """Restores this client's read-your-writes pins at the start of a request and saves
    the pins the request made in a cookie, so a redirect after a POST reads its write."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        token = context.push_pins(_pins_from_cookie(request))
        try:
            response = self.get_response(request)
            _store(response, request)
            return response
        finally:
            context.pop_pins(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = context.push_pins(_pins_from_cookie(request))
        try:
            response = await self.get_response(request)
            _store(response, request)
            return response
        finally:
            context.pop_pins(token)
