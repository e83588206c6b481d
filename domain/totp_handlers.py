"""The two-factor use cases: set-up (with step-up), verification that puts it in force, and disabling it.

The secret is sealed by the `SecretBox` port and backup codes are kept as digests; the plain
secret and codes appear only in the `TotpEnrollment` that `totp_setup` returns. An
administrator's reset of another user's set-up is `domain.user_handlers`.
"""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from domain.access import Principal
from domain.commands import Stored
from domain.errors import InvalidTotpCode
from domain.identity_core import IdentityCore
from domain.identity_requests import StepUp, TotpEnrollment
from domain.identity_rules import BACKUP_CODE_COUNT, is_totp_code, normalize_backup_code


class TotpHandlers(IdentityCore):
    """One's own two-factor authentication (TOTP and backup codes)."""

    async def totp_setup(self, principal: Principal, step_up: StepUp | None) -> TotpEnrollment:
        """Start two-factor set-up: a new secret and BACKUP_CODE_COUNT backup codes, in force after `totp_verify`.

        Needs `step_up` (the current password: two-factor is off), so a stolen token cannot put
        a second factor of its own on the account. The returned secret, URI and codes are the
        only plain copies. Raises SessionRequired, StepUpRequired, InvalidCredentials,
        InvalidTotpCode, TotpAlreadyEnabled.
        """
        principal.require_session()
        secret = self.totp.new_secret()
        codes = self.secrets.backup_codes(BACKUP_CODE_COUNT)
        sealed = self.box.seal(secret)
        hashes = [self.secrets.digest(normalize_backup_code(c)) for c in codes]

        async def decide() -> tuple[list[Aggregate], str]:
            user = await self._user(principal.user_id)
            await self._step_up(user, step_up, actor=principal.actor)
            user.start_totp_setup(sealed, hashes, actor=principal.actor)
            return [user], user.username

        username, _ = await self._retrying(decide)
        return TotpEnrollment(
            secret=secret, otpauth_uri=self.totp.provisioning_uri(secret, username=username), backup_codes=codes
        )

    async def totp_verify(self, principal: Principal, code: str) -> Stored:
        """Enable two-factor authentication with a code of the pending secret.

        Raises SessionRequired, TotpNotSetUp, TotpAlreadyEnabled, InvalidTotpCode.
        """
        principal.require_session()

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            secret = self.box.open(user.pending_totp_secret())
            if not is_totp_code(code):
                raise InvalidTotpCode("enter the 6-digit code from your authenticator app")
            step = self.totp.matching_step(secret, code.replace(" ", ""), self.clock.now())
            if step is None:
                raise InvalidTotpCode("wrong code")
            user.enable_totp(step, actor=principal.actor)
            return [user], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    async def totp_disable(self, principal: Principal, code: str) -> Stored:
        """Disable two-factor authentication, given a current TOTP code or an unused backup code.

        Raises SessionRequired, TotpNotEnabled, TotpRequired, InvalidTotpCode.
        """
        principal.require_session()

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            user.active_totp_secret()
            self._second_factor(user, code, self.clock.now(), actor=principal.actor)
            user.disable_totp(actor=principal.actor)
            return [user], None

        _, position = await self._retrying(decide)
        return Stored(position=position)
