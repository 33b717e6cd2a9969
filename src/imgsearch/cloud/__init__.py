"""The AWS glue: what the Lambda functions run (handlers.py), the S3 notifications they read
(s3_events.py), and the API key check in front of the routes that change the collection
(authorizer.py). functions/*/app.py only wire these up; the engine below knows no Lambda."""
