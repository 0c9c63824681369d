"""Forms of the domain app."""

from django import forms
from django.contrib.auth.forms import UserCreationForm, UsernameField
from django.contrib.auth.models import User


class SignUpForm(UserCreationForm):  # type: ignore[type-arg]
    email = forms.EmailField(required=False, help_text="Optional; used for password resets.")

    class Meta:  # UserCreationForm's, with the email
        model = User
        fields = ("username", "email")
        field_classes = {"username": UsernameField}
