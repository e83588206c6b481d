"""Identity rules of the domain alone: roles, scopes, the password policy, and the aggregates' checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import status_of
from domain.errors import (
    ApiKeyInvalid,
    InsufficientPermissions,
    InvalidTotpCode,
    InvalidUsername,
    LastAdmin,
    PasswordPolicy,
    RefreshTokenReused,
    SessionEnded,
    SessionRequired,
    TokenExpired,
    TokenInvalid,
    TotpAlreadyEnabled,
    TotpNotSetUp,
)
from domain.access import Permission, Principal, Role, Scope, permissions_for
from domain.identity import EndReason, Roster, Session, User, user_id_for
from domain.identity_rules import (
    SESSION_LIFETIME,
    api_key_text,
    check_password,
    check_username,
    is_totp_code,
    normalize_backup_code,
    parse_api_key,
)

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)
P = Permission


def user(role: Role = Role.ADMIN, name: str = "ada") -> User:
    return User.register(username=name, email=None, full_name="", role=role, password_hash="h", actor="test")


def test_the_permission_names_are_exactly_the_documented_ones() -> None:
    assert sorted(p.value for p in Permission) == sorted(
        "DEVICES_VIEW DEVICES_CONTROL DEVICES_MANAGE RATES_EDIT USERS_MANAGE DATA_EXPORT SYSTEM_CONFIG "
        "BACKUPS_MANAGE AUDIT_VIEW ALERTS_MANAGE".split()
    )


def test_each_role_has_its_permissions() -> None:
    assert permissions_for(Role.ADMIN) == frozenset(Permission)
    assert permissions_for(Role.OPERATOR) == {
        P.DEVICES_VIEW, P.DEVICES_CONTROL, P.DEVICES_MANAGE, P.RATES_EDIT, P.DATA_EXPORT, P.ALERTS_MANAGE
    }
    assert permissions_for(Role.VIEWER) == {P.DEVICES_VIEW}


@pytest.mark.parametrize(
    ("role", "scope", "expected"),
    [
        (Role.ADMIN, Scope.READ, {P.DEVICES_VIEW}),
        (Role.ADMIN, Scope.READ_WRITE, {P.DEVICES_VIEW, P.DEVICES_CONTROL, P.DEVICES_MANAGE, P.ALERTS_MANAGE}),
        (Role.ADMIN, Scope.ADMIN, set(Permission)),
        (Role.OPERATOR, Scope.READ, {P.DEVICES_VIEW}),
        (Role.OPERATOR, Scope.READ_WRITE, {P.DEVICES_VIEW, P.DEVICES_CONTROL, P.DEVICES_MANAGE, P.ALERTS_MANAGE}),
        (Role.OPERATOR, Scope.ADMIN, {P.DEVICES_VIEW, P.DEVICES_CONTROL, P.DEVICES_MANAGE, P.RATES_EDIT,
                                      P.DATA_EXPORT, P.ALERTS_MANAGE}),
        (Role.VIEWER, Scope.READ, {P.DEVICES_VIEW}),
        (Role.VIEWER, Scope.READ_WRITE, {P.DEVICES_VIEW}),
        (Role.VIEWER, Scope.ADMIN, {P.DEVICES_VIEW}),
    ],
)
def test_a_key_scope_never_exceeds_its_owners_role(role: Role, scope: Scope, expected: set[Permission]) -> None:
    assert permissions_for(role, scope) == expected
    assert permissions_for(role, scope) <= permissions_for(role)


def key_principal(scope: Scope, role: Role = Role.ADMIN) -> Principal:
    key_id = uuid4()
    return Principal(kind="key", user_id=uuid4(), username="ada", role=role, permissions=permissions_for(role, scope),
                     key_id=key_id, scope=scope)


def test_a_read_key_may_use_safe_methods_only() -> None:
    reader = key_principal(Scope.READ)
    for method in ("GET", "head", "OPTIONS"):
        reader.check_method(method)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(InsufficientPermissions):
            reader.check_method(method)
    key_principal(Scope.READ_WRITE).check_method("POST")


def test_a_missing_permission_is_named_and_is_a_403() -> None:
    viewer = Principal(kind="user", user_id=uuid4(), username="v", role=Role.VIEWER,
                       permissions=permissions_for(Role.VIEWER), session_id=uuid4())
    viewer.require(P.DEVICES_VIEW)
    with pytest.raises(InsufficientPermissions) as refused:
        viewer.require(P.DEVICES_VIEW, P.DEVICES_CONTROL)
    assert refused.value.required == "DEVICES_CONTROL" and refused.value.code == "INSUFFICIENT_PERMISSIONS"
    assert status_of(refused.value) == 403


def test_the_actor_names_the_user_or_the_key() -> None:
    principal = key_principal(Scope.ADMIN)
    assert principal.actor == f"key:{principal.key_id}"
    with pytest.raises(SessionRequired):
        principal.require_session()
    person = Principal(kind="user", user_id=uuid4(), username="a", role=Role.ADMIN,
                       permissions=permissions_for(Role.ADMIN), session_id=uuid4())
    assert person.actor == f"user:{person.user_id}"
    person.require_session()


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("Short1pass", "at least 12"),
        ("alllowercaseletters", "two of"),
        ("123456789012345", "two of"),
        ("ÄÖÜÄÖÜÄÖÜÄÖÜÄÖÜ", "two of"),
        ("x" * 257 + "A", "at most"),
        ("my-ada-password-1", "user name"),
        ("MY-ADA-password-1", "user name"),
    ],
)
def test_the_password_policy_names_the_rule_broken(password: str, rule: str) -> None:
    with pytest.raises(PasswordPolicy, match=rule) as refused:
        check_password(password, username="ada")
    assert status_of(refused.value) == 422


@pytest.mark.parametrize("password", ["correct horse battery", "Tr0ub4dor&3xx", "0123456789ab", "paß wörter ünd"])
def test_passwords_within_the_policy_pass(password: str) -> None:
    check_password(password, username="ada")


@given(st.text(alphabet=st.characters(categories=["Ll"]), min_size=12, max_size=40))
def test_no_single_kind_of_character_is_enough(password: str) -> None:
    with pytest.raises(PasswordPolicy):
        check_password(password, username="zz-nobody")


def test_user_names_are_one_user_whatever_their_case() -> None:
    assert user_id_for("Ada.Lovelace") == user_id_for("ada.lovelace") != user_id_for("ada_lovelace")
    for bad in ("ab", "-ada", "a" * 65, "ada lovelace", "ada/x", ""):
        with pytest.raises(InvalidUsername):
            check_username(bad)
    assert check_username("ada@home.lan") == "ada@home.lan"


def test_codes_are_told_apart_and_backup_codes_compared_loosely() -> None:
    assert is_totp_code("123456") and is_totp_code("123 456")
    assert not is_totp_code("12345") and not is_totp_code("ABCD-EFGH") and not is_totp_code("１２３４５６")
    assert normalize_backup_code("abcd-efgh ijkl") == "ABCDEFGHIJKL"


def test_an_api_key_parses_back_into_its_id_and_secret() -> None:
    key_id = uuid4()
    assert parse_api_key(api_key_text(key_id, "s3cr_et-x")) == (key_id, "s3cr_et-x")


@given(st.text(max_size=80))
def test_anything_not_shaped_like_a_key_is_refused_as_a_key(text: str) -> None:
    try:
        key_id, secret = parse_api_key(text)
    except ApiKeyInvalid:
        return
    assert text.strip() == api_key_text(key_id, secret)


def test_the_last_admin_cannot_leave_the_roster() -> None:
    first, second = uuid4(), uuid4()
    roster = Roster(first_admin=first, actor="t")
    with pytest.raises(LastAdmin):
        roster.remove_admin(first, actor="t")
    roster.add_admin(second, actor="t")
    roster.remove_admin(first, actor="t")
    assert roster.admins == {second}
    with pytest.raises(LastAdmin):
        roster.remove_admin(second, actor="t")


def test_a_totp_step_is_accepted_once_and_only_moving_forward() -> None:
    ada = user()
    ada.start_totp_setup("sealed", ["h1"], actor="t")
    ada.enable_totp(100, actor="t")
    with pytest.raises(InvalidTotpCode):
        ada.accept_totp_step(100, actor="t")
    with pytest.raises(InvalidTotpCode):
        ada.accept_totp_step(99, actor="t")
    ada.accept_totp_step(101, actor="t")
    with pytest.raises(TotpAlreadyEnabled):
        ada.start_totp_setup("again", [], actor="t")


def test_enabling_two_factor_needs_a_started_setup() -> None:
    with pytest.raises(TotpNotSetUp):
        user().enable_totp(1, actor="t")


def test_a_backup_code_is_spent_once() -> None:
    ada = user()
    ada.start_totp_setup("sealed", ["h1", "h2"], actor="t")
    ada.enable_totp(1, actor="t")
    ada.use_backup_code("h2", actor="t")
    assert ada.backup_codes_left == 1
    with pytest.raises(InvalidTotpCode):
        ada.use_backup_code("h2", actor="t")
    with pytest.raises(InvalidTotpCode):
        ada.use_backup_code("nope", actor="t")


def test_a_session_refreshes_by_generation_and_ends_on_reuse() -> None:
    session = Session.start(user_id=uuid4(), ip="127.0.0.1", user_agent="t", now=T0, actor="t")
    session.refresh(1, T0, actor="t")
    session.refresh(2, T0, actor="t")
    assert session.generation == 3
    with pytest.raises(TokenInvalid):
        session.refresh(7, T0, actor="t")
    with pytest.raises(RefreshTokenReused):
        session.refresh(2, T0, actor="t")
    assert session.end_reason is EndReason.REUSE_DETECTED
    with pytest.raises(SessionEnded):
        session.refresh(3, T0, actor="t")


def test_an_expired_session_ends_when_refreshed() -> None:
    session = Session.start(user_id=uuid4(), ip="", user_agent="", now=T0, actor="t")
    assert session.is_active(T0 + SESSION_LIFETIME - timedelta(seconds=1))
    with pytest.raises(TokenExpired):
        session.refresh(1, T0 + SESSION_LIFETIME, actor="t")
    assert session.end_reason is EndReason.EXPIRED and not session.is_active(T0)


def test_sign_ins_release_sessions_no_longer_tracked() -> None:
    ada = user()
    first, second, third = uuid4(), uuid4(), uuid4()
    ada.signed_in(first, released=[], actor="t")
    ada.signed_in(second, released=[], actor="t")
    ada.signed_in(third, released=[first], actor="t")
    assert ada.sessions == [second, third]


def test_admin_standing_follows_role_activity_and_deletion() -> None:
    ada = user(Role.OPERATOR)
    assert not ada.is_active_admin
    ada.change_role(Role.ADMIN, actor="t")
    assert ada.is_active_admin
    ada.deactivate(actor="t")
    assert not ada.is_active_admin
    ada.reactivate(actor="t")
    ada.delete(actor="t")
    assert not ada.is_active_admin and ada.deleted
