import evalkit.sae  # noqa: F401,E402  (registers evalkit's SAE variants into sae-lens)
