"""Random tokens cannot push verified callers out of the OpenID cache, nor flood the
homeserver with checks (issue 11, item 8).

The attack: the positive and negative caches were one bounded LRU, so a stream of made-up
tokens (each one a rejected entry) evicted every verified caller, and each made-up token
was one more ``/openid/userinfo`` request to the homeserver.
"""

from __future__ import annotations

import secrets
from collections import Counter

import pytest

from datarooms.errors import UnauthorizedError
from datarooms.services.openid import OpenIdVerifier, VerificationLimitedError
from datarooms.testing import TestHomeserver
from tests.test_statebot import OpenClient, openid_token


async def test_random_tokens_evict_no_verified_caller_and_are_rate_limited(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    server = alice.user_id.split(":", 1)[1]
    results: Counter[str] = Counter()
    verifier = OpenIdVerifier(
        {server: homeserver.base_url},
        default_server=server,
        max_entries=5,
        max_negative_entries=3,
        verify_per_second=0.001,  # no refill within the test
        verify_burst=12,
        on_result=lambda r: results.update([r]),
    )
    try:
        good = await openid_token(alice)
        assert (await verifier.verify(good, server)).user_id == alice.user_id
        assert results["verified"] == 1

        # Made-up tokens: the homeserver is asked about the first ones only (the budget),
        # then they are refused without asking (429).
        limited = 0
        for _ in range(40):
            try:
                await verifier.verify(secrets.token_urlsafe(24), server)
            except VerificationLimitedError as exc:
                assert exc.http_status == 429 and exc.errcode == "M_LIMIT_EXCEEDED"
                limited += 1
            except UnauthorizedError as exc:
                assert exc.http_status == 401
        assert results["rejected"] == 11  # 12 checks: alice's token, then 11 made-up ones
        assert limited == 29 and results["limited"] == 29
        # Rejected tokens live in a cache of their own, bounded apart from callers.
        assert verifier.rejected_cache_size == 3

        # Alice is still cached: no new check (the budget is spent, so one would fail).
        assert (await verifier.verify(good, server)).user_id == alice.user_id
        assert results["cached"] == 1 and results["verified"] == 1
        # A new genuine token has to wait for the budget too (the price of the bound).
        with pytest.raises(VerificationLimitedError):
            await verifier.verify(await openid_token(alice), server)
    finally:
        await verifier.close()
