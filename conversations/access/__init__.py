"""Who may open what, and how much: permissions and the owner-checked getters every page uses
(permissions.py), roles as groups (roles.py), the reply cap and the one admission check of a turn or an
API call (limits.py), quotas (quotas.py), the account page and the admin's usage page (usage_views.py,
usage_admin.py).

Imports models, delivery and errors only; chat, the API and every page import it.
"""
