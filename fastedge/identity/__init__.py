"""Who a reader is: anonymous-session cookies (:mod:`.sessions`) and
signed single sign-on payloads (:mod:`.sso`).

Pure logic shared by the comment API, the widget and live threads; it
imports only the store's model, so every feature can depend on it.
"""
