"""Evaluation reports in the admin: the list, a report's page and plot, running one in the background,
and the adapter list's action (admin.py). The report row is conversations/models/evaluation.py; the
measuring is modelhub's (modelhub.api.evaluate).
"""
