"""Signed app allowlists: what verifies, what does not, and revisions that only grow."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.domain.app_policy import AppPolicy, BadAppPolicy, Revisions, public_bytes, sign, verify

KEY = Ed25519PrivateKey.generate()
PUB = public_bytes(KEY)


def test_a_signed_allowlist_verifies_with_the_pinned_key_and_round_trips():
    signed = sign(KEY, AppPolicy.of("sd-main-sales-0a1b2c", 5, {"mousepad", "firefox-esr", "mousepad"}))
    assert verify(PUB, signed.document, signed.signature) == AppPolicy("sd-main-sales-0a1b2c", 5,
                                                                       ("firefox-esr", "mousepad"))
    assert signed.document == AppPolicy.of("sd-main-sales-0a1b2c", 5, ("mousepad", "firefox-esr")).document()


@pytest.mark.parametrize("tamper", [
    lambda doc, sig: (doc.replace("mousepad", "galculator"), sig),  # a widened list
    lambda doc, sig: (doc.replace('"revision":5', '"revision":6'), sig),  # a replayed list renumbered
    lambda doc, sig: (doc, bytes([sig[0] ^ 1]) + sig[1:]),  # one bit of the signature
    lambda doc, sig: (doc, sign(Ed25519PrivateKey.generate(), AppPolicy.of("d", 5, ())).signature),  # other key
])
def test_any_change_to_a_signed_allowlist_is_refused(tamper):
    signed = sign(KEY, AppPolicy.of("d", 5, {"mousepad"}))
    doc, sig = tamper(signed.document, signed.signature)
    with pytest.raises(BadAppPolicy, match="signature"):
        verify(PUB, doc, sig)


@pytest.mark.parametrize(("doc", "field"), [
    ({"format": 2, "desktop": "d", "revision": 1, "apps": []}, "format"),
    ({"format": 1, "desktop": "", "revision": 1, "apps": []}, "desktop"),
    ({"format": 1, "desktop": "d", "revision": 0, "apps": []}, "revision"),
    ({"format": 1, "desktop": "d", "revision": 1, "apps": ["Bad App"]}, "apps"),
    ({"format": 1, "desktop": "d", "revision": 1}, "document"),
])
def test_a_well_signed_but_malformed_document_names_the_field(doc, field):
    text = json.dumps(doc, separators=(",", ":"))
    with pytest.raises(BadAppPolicy, match=field):
        verify(PUB, text, KEY.sign(text.encode()))


def test_revisions_stay_while_the_list_does_and_only_grow():
    book, signed = Revisions(), []

    def signer(policy):
        signed.append(policy)
        return sign(KEY, policy)

    first = book.current("d", frozenset({"mousepad"}), 1_000, signer)
    assert book.current("d", frozenset({"mousepad"}), 2_000, signer) is first  # unchanged: not re-signed
    second = book.current("d", frozenset({"mousepad", "galculator"}), 1_000, signer)  # the clock went back
    assert second.policy.revision == first.policy.revision + 1
    assert book.current("d", frozenset(), 9_000, signer).policy.revision == 9_000
    assert len(signed) == 3
    book.keep_only(set())
    assert book.current("d", frozenset(), 10_000, signer).policy.revision == 10_000  # a restart starts at the clock
