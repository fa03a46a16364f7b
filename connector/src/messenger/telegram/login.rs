//! Signing in — QR tokens, phone codes, the two-step password, datacenter
//! migration — and logging out.

use super::*;

impl Inner {
    pub(super) async fn login_state(&self) -> Result<LoginState, MessengerError> {
        let mut phase = self.phase.lock().await;
        if let Some(identity) = self.session.identity() {
            *phase = Phase::LoggedIn;
            return Ok(LoginState::LoggedIn { identity });
        }
        match phase.clone() {
            Phase::LoggedOut(reason) => {
                // Said once; the next look offers a new login.
                *phase = Phase::Start;
                return Ok(LoginState::LoggedOut { reason });
            }
            Phase::Password { tried_configured: false } if self.s.password.is_some() => {
                *phase = Phase::Password { tried_configured: true };
                let pw = self.s.password.clone().unwrap_or_default();
                return self.check_password(&mut phase, &pw).await;
            }
            Phase::Password { .. } => return Ok(LoginState::PasswordRequired),
            Phase::CodeSent { .. } => return Ok(LoginState::CodeRequired),
            Phase::Qr { token, expires_ms }
                if now_ms() < expires_ms - QR_MARGIN_MS && !self.token_updated.load(Ordering::SeqCst) =>
            {
                return Ok(LoginState::Qr { code: map::login_url(&token), expires_at_ms: expires_ms });
            }
            _ => {}
        }
        match self.s.login.clone() {
            LoginMethod::Qr => self.export_token(&mut phase).await,
            LoginMethod::PhoneCode { phone } => {
                let req = tl::functions::auth::SendCode {
                    phone_number: phone,
                    api_id: self.s.api_id,
                    api_hash: self.s.api_hash.clone(),
                    settings: tl::enums::CodeSettings::Settings(tl::types::CodeSettings {
                        allow_flashcall: false,
                        current_number: false,
                        allow_app_hash: false,
                        allow_missed_call: false,
                        allow_firebase: false,
                        unknown_number: false,
                        logout_tokens: None,
                        token: None,
                        app_sandbox: None,
                    }),
                };
                match self.call(None, &req).await {
                    Ok(tl::enums::auth::SentCode::Code(c)) => {
                        *phase = Phase::CodeSent { hash: c.phone_code_hash };
                        Ok(LoginState::CodeRequired)
                    }
                    Ok(tl::enums::auth::SentCode::Success(s)) => self.complete(&mut phase, s.authorization).await,
                    Ok(other) => Err(MessengerError::Unavailable(format!("Telegram cannot send a code: {other:?}"))),
                    Err(e) => Err(self.classify(e).await),
                }
            }
            LoginMethod::Bot { token } => {
                let req = tl::functions::auth::ImportBotAuthorization {
                    flags: 0,
                    api_id: self.s.api_id,
                    api_hash: self.s.api_hash.clone(),
                    bot_auth_token: token,
                };
                match self.call(None, &req).await {
                    Ok(a) => self.complete(&mut phase, a).await,
                    Err(e) if e.is("ACCESS_TOKEN_INVALID") || e.is("ACCESS_TOKEN_EXPIRED") => {
                        Ok(LoginState::LoggedOut { reason: format!("the bot token was refused ({e})") })
                    }
                    Err(e) => Err(self.classify(e).await),
                }
            }
        }
    }

    pub(super) async fn export_token(&self, phase: &mut Phase) -> Result<LoginState, MessengerError> {
        self.token_updated.store(false, Ordering::SeqCst);
        let req = tl::functions::auth::ExportLoginToken {
            api_id: self.s.api_id,
            api_hash: self.s.api_hash.clone(),
            except_ids: Vec::new(),
        };
        let answer = self.call(None, &req).await;
        self.on_token(phase, answer).await
    }

    pub(super) async fn on_token(
        &self,
        phase: &mut Phase,
        answer: Result<tl::enums::auth::LoginToken, RpcFailure>,
    ) -> Result<LoginState, MessengerError> {
        use tl::enums::auth::LoginToken as T;
        match answer {
            Ok(T::Token(t)) => {
                let expires_ms = i64::from(t.expires) * 1000;
                let code = map::login_url(&t.token);
                *phase = Phase::Qr { token: t.token, expires_ms };
                Ok(LoginState::Qr { code, expires_at_ms: expires_ms })
            }
            Ok(T::MigrateTo(m)) => {
                // Scanned by an account that lives in another datacenter: import the
                // token there, which becomes home.
                tracing::info!(
                    account = self.s.account,
                    dc = m.dc_id,
                    "QR accepted; the account lives in datacenter {}",
                    m.dc_id
                );
                self.session.set_home_dc_id(m.dc_id).await.map_err(storage)?;
                let answer = self.call(Some(m.dc_id), &tl::functions::auth::ImportLoginToken { token: m.token }).await;
                match answer {
                    Ok(T::MigrateTo(_)) => Err(MessengerError::Unavailable("Telegram asked to migrate twice".into())),
                    other => Box::pin(self.on_token(phase, other)).await,
                }
            }
            Ok(T::Success(s)) => self.complete(phase, s.authorization).await,
            Err(e) if e.is("SESSION_PASSWORD_NEEDED") => {
                *phase = Phase::Password { tried_configured: false };
                if let Some(pw) = self.s.password.clone() {
                    *phase = Phase::Password { tried_configured: true };
                    return self.check_password(phase, &pw).await;
                }
                Ok(LoginState::PasswordRequired)
            }
            Err(e) => Err(self.classify(e).await),
        }
    }

    pub(super) async fn check_password(&self, phase: &mut Phase, password: &str) -> Result<LoginState, MessengerError> {
        let info = match self.call(None, &tl::functions::account::GetPassword {}).await {
            Ok(tl::enums::account::Password::Password(p)) => p,
            Err(e) => return Err(self.classify(e).await),
        };
        let Some(tl::enums::PasswordKdfAlgo::Sha256Sha256Pbkdf2Hmacsha512iter100000Sha256ModPow(algo)) =
            &info.current_algo
        else {
            return Err(MessengerError::Rejected(
                "the account's password uses an algorithm this connector does not know".into(),
            ));
        };
        let (Some(srp_b), Some(srp_id)) = (info.srp_b.clone(), info.srp_id) else {
            return Err(MessengerError::Rejected("Telegram says the account has no password".into()));
        };
        if !check_p_and_g(&algo.p, &algo.g) {
            return Err(MessengerError::Unavailable("Telegram sent unusable password parameters".into()));
        }
        let (m1, g_a) =
            calculate_2fa(&algo.salt1, &algo.salt2, &algo.p, &algo.g, srp_b, info.secure_random.clone(), password);
        let req = tl::functions::auth::CheckPassword {
            password: tl::enums::InputCheckPasswordSrp::Srp(tl::types::InputCheckPasswordSrp {
                srp_id,
                a: g_a.to_vec(),
                m1: m1.to_vec(),
            }),
        };
        match self.call(None, &req).await {
            Ok(a) => self.complete(phase, a).await,
            Err(e) if e.is("PASSWORD_HASH_INVALID") => {
                *phase = Phase::Password { tried_configured: true };
                Err(MessengerError::Rejected("the two-step verification password is wrong".into()))
            }
            Err(e) => Err(self.classify(e).await),
        }
    }

    pub(super) async fn complete(
        &self,
        phase: &mut Phase,
        authorization: tl::enums::auth::Authorization,
    ) -> Result<LoginState, MessengerError> {
        let user = match authorization {
            tl::enums::auth::Authorization::Authorization(a) => a.user,
            tl::enums::auth::Authorization::SignUpRequired(_) => {
                let reason = "this phone number has no Telegram account; sign up in a Telegram app first".to_string();
                *phase = Phase::LoggedOut(reason.clone());
                return Ok(LoginState::LoggedOut { reason });
            }
        };
        let tl::enums::User::User(u) = &user else {
            return Err(MessengerError::Unavailable("Telegram returned an empty user at login".into()));
        };
        let identity = map::identity_of(u);
        let me = PeerInfo::User {
            id: u.id,
            auth: Some(PeerAuth::from_hash(u.access_hash.unwrap_or(0))),
            bot: Some(u.bot),
            is_self: Some(true),
        };
        self.session.set_identity(identity.clone(), me).await.map_err(storage)?;
        tracing::info!(account = self.s.account, user = identity.id, bot = u.bot, "signed in to Telegram");
        *phase = Phase::LoggedIn;
        Ok(LoginState::LoggedIn { identity })
    }

    pub(super) async fn submit(&self, code: Option<&str>, password: Option<&str>) -> Result<(), MessengerError> {
        let mut phase = self.phase.lock().await;
        match (phase.clone(), code, password) {
            (Phase::Password { .. }, _, Some(pw)) => self.check_password(&mut phase, pw).await.map(|_| ()),
            (Phase::CodeSent { hash }, Some(code), _) => {
                let LoginMethod::PhoneCode { phone } = &self.s.login else {
                    return Err(MessengerError::Rejected("this account does not sign in with a code".into()));
                };
                let req = tl::functions::auth::SignIn {
                    phone_number: phone.clone(),
                    phone_code_hash: hash,
                    phone_code: Some(code.trim().to_string()),
                    email_verification: None,
                };
                match self.call(None, &req).await {
                    Ok(a) => self.complete(&mut phase, a).await.map(|_| ()),
                    Err(e) if e.is("SESSION_PASSWORD_NEEDED") => {
                        *phase = Phase::Password { tried_configured: false };
                        if let (Some(pw), None) = (self.s.password.clone(), password) {
                            *phase = Phase::Password { tried_configured: true };
                            return self.check_password(&mut phase, &pw).await.map(|_| ());
                        }
                        match password {
                            Some(pw) => self.check_password(&mut phase, pw).await.map(|_| ()),
                            None => Ok(()),
                        }
                    }
                    Err(e) if e.is("PHONE_CODE_INVALID") => Err(MessengerError::Rejected("the code is wrong".into())),
                    Err(e) if e.is("PHONE_CODE_EXPIRED") => {
                        *phase = Phase::Start;
                        Err(MessengerError::Rejected("the code expired; a new one will be sent".into()))
                    }
                    Err(e) => Err(self.classify(e).await),
                }
            }
            (Phase::LoggedIn, _, _) => Ok(()),
            _ => Err(MessengerError::Rejected("nothing to submit at this step of the login".into())),
        }
    }
    pub(super) async fn logout(&self) -> Result<(), MessengerError> {
        if self.session.identity().is_some()
            && let Err(e) = self.call(None, &tl::functions::auth::LogOut {}).await
        {
            tracing::warn!(account = self.s.account, "Telegram log-out call failed (the session is wiped anyway): {e}");
        }
        self.session.wipe().await.map_err(storage)?;
        *self.phase.lock().await = Phase::Start;
        Ok(())
    }
}
