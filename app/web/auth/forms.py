from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length, Optional

from app.web import plain_text


class LoginForm(FlaskForm):
    # plain_text: the address is looked up before anything checks it, and PostgreSQL refuses a NUL.
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254), plain_text])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class SecondFactorForm(FlaskForm):
    code = StringField("Code from your authenticator app, or a recovery code",
                       validators=[DataRequired(), Length(max=32)], render_kw={"autocomplete": "one-time-code"})


class EnrolForm(FlaskForm):
    code = StringField("Six-digit code from your authenticator app", validators=[DataRequired(), Length(max=16)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})


class ReauthForm(FlaskForm):
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    code = StringField("Code from your authenticator app (if you use one)", validators=[Optional(), Length(max=32)],
                       render_kw={"autocomplete": "one-time-code"})


class PasswordChangeForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), Length(max=1024)])
    confirm = PasswordField("New password again", validators=[DataRequired(), EqualTo("password", "The two entries differ.")])


class EmailChangeForm(FlaskForm):
    email = EmailField("New e-mail", validators=[DataRequired(), Length(max=254)])


class ConfirmForm(FlaskForm):
    """A button that changes state: CSRF token only."""
