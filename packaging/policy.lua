-- /etc/register/policy.lua: the policy register.service runs (see
-- /usr/share/doc/register/policy.md).  As shipped it is the default
-- schema, /registered/<host ip>/<image>/<container id>.  Edit it, or copy
-- an example from /usr/share/register/examples/ over it, then
--   register check /etc/register/policy.lua     (dry run on this host)
--   systemctl reload register                   (applied all or nothing)
return require "register.default"
