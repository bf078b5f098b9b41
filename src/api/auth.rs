//! etcdserverpb.Auth. Authentication is off in this build: AuthStatus reports it
//! disabled, Authenticate answers etcd's "authentication is not enabled", and user
//! and role management is refused with `Unimplemented`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::unary;
use crate::error::Error;
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
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use crate::server::EtcdServer;

const SVC: &str = "etcdserverpb.Auth";

pub struct AuthService {
    pub s: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        unary(
            SVC,
            "AuthStatus",
            Ok(AuthStatusResponse {
                header: Some(self.s.header(self.s.store.current_rev())),
                enabled: false,
                auth_revision: 1,
            }),
        )
    }

    async fn authenticate(
        &self,
        _req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        unary::<AuthenticateResponse>(SVC, "Authenticate", Err(Error::AuthNotEnabled))
    }

    async fn auth_enable(
        &self,
        _req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        unary::<AuthEnableResponse>(SVC, "AuthEnable", Err(Error::Unimplemented))
    }

    async fn auth_disable(
        &self,
        _req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        unary::<AuthDisableResponse>(SVC, "AuthDisable", Err(Error::Unimplemented))
    }

    async fn user_add(
        &self,
        _req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        unary::<AuthUserAddResponse>(SVC, "UserAdd", Err(Error::Unimplemented))
    }

    async fn user_get(
        &self,
        _req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        unary::<AuthUserGetResponse>(SVC, "UserGet", Err(Error::Unimplemented))
    }

    async fn user_list(
        &self,
        _req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        unary::<AuthUserListResponse>(SVC, "UserList", Err(Error::Unimplemented))
    }

    async fn user_delete(
        &self,
        _req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        unary::<AuthUserDeleteResponse>(SVC, "UserDelete", Err(Error::Unimplemented))
    }

    async fn user_change_password(
        &self,
        _req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        unary::<AuthUserChangePasswordResponse>(
            SVC,
            "UserChangePassword",
            Err(Error::Unimplemented),
        )
    }

    async fn user_grant_role(
        &self,
        _req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        unary::<AuthUserGrantRoleResponse>(SVC, "UserGrantRole", Err(Error::Unimplemented))
    }

    async fn user_revoke_role(
        &self,
        _req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        unary::<AuthUserRevokeRoleResponse>(SVC, "UserRevokeRole", Err(Error::Unimplemented))
    }

    async fn role_add(
        &self,
        _req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        unary::<AuthRoleAddResponse>(SVC, "RoleAdd", Err(Error::Unimplemented))
    }

    async fn role_get(
        &self,
        _req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        unary::<AuthRoleGetResponse>(SVC, "RoleGet", Err(Error::Unimplemented))
    }

    async fn role_list(
        &self,
        _req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        unary::<AuthRoleListResponse>(SVC, "RoleList", Err(Error::Unimplemented))
    }

    async fn role_delete(
        &self,
        _req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        unary::<AuthRoleDeleteResponse>(SVC, "RoleDelete", Err(Error::Unimplemented))
    }

    async fn role_grant_permission(
        &self,
        _req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        unary::<AuthRoleGrantPermissionResponse>(
            SVC,
            "RoleGrantPermission",
            Err(Error::Unimplemented),
        )
    }

    async fn role_revoke_permission(
        &self,
        _req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        unary::<AuthRoleRevokePermissionResponse>(
            SVC,
            "RoleRevokePermission",
            Err(Error::Unimplemented),
        )
    }
}
