import pytest

from advshield.errors import AdvshieldError
from advshield.registry import ATTACKS, DEFENSES, MODELS, Registry


def test_register_get_and_list():
    r = Registry("thing")

    @r.register("Foo", "a foo")
    class Foo:
        """Docstring line."""

    @r.register("bar")
    class Bar:
        """Bar does bar things."""

    assert r.get("foo") is Foo and r.get("FOO") is Foo
    assert r.names() == ["bar", "foo"] and list(r) == ["bar", "foo"] and len(r) == 2
    assert r.help("foo") == "a foo" and r.help("bar") == "Bar does bar things."
    assert "foo" in r and "baz" not in r


def test_unknown_name_is_a_user_error_listing_known_names():
    r = Registry("thing")
    r.add("a", object())
    with pytest.raises(AdvshieldError, match=r"unknown thing 'zzz' \(known: a\)"):
        r.get("zzz")


def test_duplicate_registration_refused():
    r = Registry("thing")
    r.add("a", 1)
    with pytest.raises(ValueError):
        r.add("A", 2)


def test_builtin_registries_are_populated():
    assert {"fgsm", "bim", "pgd", "pgdl2"} <= set(ATTACKS.names())
    assert "none" in DEFENSES
    assert {"vgg", "resnet", "lenet", "vgg16-features"} <= set(MODELS.names())


def test_aliases_resolve_but_are_not_listed():
    r = Registry("thing")
    r.add("bim", 1, "iterative")
    r.alias("I-FGSM", "bim")
    assert r.get("i-fgsm") == 1 and "I-FGSM" in r and r.names() == ["bim"] and r.help("i-fgsm") == "iterative"
    with pytest.raises(ValueError):
        r.alias("bim", "bim")
    with pytest.raises(AdvshieldError):
        r.alias("x", "missing")
