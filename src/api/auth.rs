//! etcdserverpb.Auth: users, roles, permissions, enabling auth, and
//! Authenticate (simple tokens). Management needs the root role once auth is on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Response, Status};

use super::unary;
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use crate::server::request::AssignToken;
use crate::server::{EtcdServer, Op};

const SVC: &str = "etcdserverpb.Auth";

static TOKEN_SEQ: AtomicU64 = AtomicU64::new(1);

pub struct AuthService {
    pub s: Arc<EtcdServer>,
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.s.header(self.s.store.current_rev()))
    }

    /// A change through the log.
    async fn change(&self, op: Op) -> Result<Option<ResponseHeader>> {
        self.s.propose(op).await?;
        Ok(self.header())
    }

    async fn authenticate(&self, r: AuthenticateRequest) -> Result<AuthenticateResponse> {
        if !self.s.auth.enabled() {
            return Err(Error::AuthNotEnabled);
        }
        if r.name.is_empty() {
            return Err(Error::AuthFailed);
        }
        if self.s.auth.jwt().is_some() {
            // The token carries the auth revision: check the password and sign
            // against the state after catching up with the leader.
            self.s.read_barrier().await?;
        }
        let auth = self.s.auth.clone();
        let (name, password) = (r.name.clone(), r.password);
        tokio::task::spawn_blocking(move || auth.check_password(&name, &password))
            .await
            .map_err(|_| Error::AuthFailed)??;
        let token = match self.s.auth.jwt() {
            // Signed, not stored: every member holding the key accepts it.
            Some(jwt) => jwt
                .sign(&r.name, self.s.auth.revision())
                .ok_or(Error::VerifyOnly)?,
            None => {
                let token = format!(
                    "{}.{}",
                    crate::auth::random_token(),
                    TOKEN_SEQ.fetch_add(1, Ordering::Relaxed)
                );
                self.s
                    .propose(Op::AssignToken(AssignToken {
                        user: r.name.clone(),
                        token: token.clone(),
                    }))
                    .await?;
                token
            }
        };
        crate::info!("authenticated a user", user = r.name);
        Ok(AuthenticateResponse {
            header: self.header(),
            token,
        })
    }

    fn hash(&self, password: String) -> Result<String> {
        self.s.auth.hash_password(&password)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let r = self
            .change(Op::AuthEnable(AuthEnableRequest {}))
            .await
            .map(|header| AuthEnableResponse { header });
        if r.is_ok() {
            crate::info!("enabled authentication");
        }
        unary(SVC, "AuthEnable", r)
    }

    async fn auth_disable(
        &self,
        _req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let r = self
            .change(Op::AuthDisable(AuthDisableRequest {}))
            .await
            .map(|header| AuthDisableResponse { header });
        unary(SVC, "AuthDisable", r)
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        unary(
            SVC,
            "AuthStatus",
            Ok(AuthStatusResponse {
                header: self.header(),
                enabled: self.s.auth.enabled(),
                auth_revision: self.s.auth.revision(),
            }),
        )
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        unary(
            SVC,
            "Authenticate",
            AuthService::authenticate(self, req.into_inner()).await,
        )
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let r = async {
            let mut r = req.into_inner();
            if r.name.is_empty() {
                return Err(Error::UserEmpty);
            }
            let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
            if !no_password && r.hashed_password.is_empty() {
                let pw = std::mem::take(&mut r.password);
                r.hashed_password = self.hash(pw)?;
            }
            r.password.clear();
            self.s.propose(Op::UserAdd(r)).await?;
            Ok(AuthUserAddResponse {
                header: self.header(),
            })
        }
        .await;
        unary(SVC, "UserAdd", r)
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let r = (|| {
            let u = self
                .s
                .auth
                .user(&req.get_ref().name)
                .ok_or(Error::UserNotFound)?;
            Ok(AuthUserGetResponse {
                header: self.header(),
                roles: u.roles,
            })
        })();
        unary(SVC, "UserGet", r)
    }

    async fn user_list(
        &self,
        _req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let r = Ok(AuthUserListResponse {
            header: self.header(),
            users: self.s.auth.user_names(),
        });
        unary(SVC, "UserList", r)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let op = Op::UserDelete(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthUserDeleteResponse { header });
        unary(SVC, "UserDelete", r)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let r = async {
            let mut r = req.into_inner();
            if r.hashed_password.is_empty() {
                let pw = std::mem::take(&mut r.password);
                r.hashed_password = self.hash(pw)?;
            }
            r.password.clear();
            self.s.propose(Op::UserChangePassword(r)).await?;
            Ok(AuthUserChangePasswordResponse {
                header: self.header(),
            })
        }
        .await;
        unary(SVC, "UserChangePassword", r)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let op = Op::UserGrantRole(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthUserGrantRoleResponse { header });
        unary(SVC, "UserGrantRole", r)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let op = Op::UserRevokeRole(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthUserRevokeRoleResponse { header });
        unary(SVC, "UserRevokeRole", r)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let op = Op::RoleAdd(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthRoleAddResponse { header });
        unary(SVC, "RoleAdd", r)
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let r = (|| {
            let role = self
                .s
                .auth
                .role(&req.get_ref().role)
                .ok_or(Error::RoleNotFound)?;
            Ok(AuthRoleGetResponse {
                header: self.header(),
                perm: role.key_permission,
            })
        })();
        unary(SVC, "RoleGet", r)
    }

    async fn role_list(
        &self,
        _req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let r = Ok(AuthRoleListResponse {
            header: self.header(),
            roles: self.s.auth.role_names(),
        });
        unary(SVC, "RoleList", r)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let op = Op::RoleDelete(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthRoleDeleteResponse { header });
        unary(SVC, "RoleDelete", r)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let op = Op::RoleGrantPermission(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthRoleGrantPermissionResponse { header });
        unary(SVC, "RoleGrantPermission", r)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let op = Op::RoleRevokePermission(req.get_ref().clone());
        let r = self
            .change(op)
            .await
            .map(|header| AuthRoleRevokePermissionResponse { header });
        unary(SVC, "RoleRevokePermission", r)
    }
}
