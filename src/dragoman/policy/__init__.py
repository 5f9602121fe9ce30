"""Who may do what beyond the mapping's own grants: the role policy (``policy.roles``) caps
every role grant, and step-up (``policy.step_up``) asks a recent or stronger sign-in for
risky tiers."""
