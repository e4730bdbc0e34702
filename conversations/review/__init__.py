"""The review queue: which feedback waits for whom (queue.py), its pages (views.py) and its admin
(admin.py). A decision is `Review.decide` (conversations/models/review.py); reviewers' agreement is
training_data/agreement.py's, since every dataset card records it.

Imports access, training_data and models; nothing imports it but the URLs and the admin.
"""
