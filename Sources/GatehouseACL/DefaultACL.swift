/// The ACL a broker uses when none is configured and `./acl/default.acl` is absent; the same
/// text as the repository's `acl/default.acl` (a test keeps them equal).
public enum DefaultACL {
    public static let text = """
        # Gatehouse's default ACL. Rules belong to roles; a request that no rule of the client's
        # roles allows is rejected, and a deny beats any allow. Reload with SIGHUP
        # (`gatehouse acl reload`); check a change first with `gatehouse acl lint`.
        default deny

        # The identity made on first start. Everything, $SYS included.
        role admin
          allow all #
          allow all $SYS/#

        # Devices: their own telemetry out, their own commands in, within their tenant.
        role device
          allow publish   tenants/%t/devices/%c/telemetry/#
          allow subscribe tenants/%t/devices/%c/commands/+

        # Operators: every device's telemetry in their tenant, and commands to any of them.
        role operator
          allow subscribe tenants/%t/devices/+/telemetry/#
          allow publish   tenants/%t/devices/+/commands/+

        # Clients without credentials exist only when the broker runs with --allow-anonymous,
        # which is for development: they may use every topic and read $SYS.
        role anonymous
          allow all #
          allow subscribe $SYS/#

        """
}
