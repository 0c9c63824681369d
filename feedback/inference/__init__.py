"""How the web side asks a policy for answers: the engine in this process, or a remote one."""
